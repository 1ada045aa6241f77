"""The README fits on a page and every link in it and in docs/ leads somewhere: a file that exists and, with an
#anchor, a heading of that file (mkdocs --strict checks the site's own links in CI; this also covers the README,
which GitHub renders and mkdocs does not build)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub and Python-Markdown's toc both make it for our headings."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return re.sub(r"[\s-]+", "-", text).strip("-")


def _anchors(path: Path) -> set[str]:
    body = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # a '# comment' in a code block is no heading
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", body, flags=re.M)}


def test_the_readme_fits_on_a_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", ["README.md", *sorted(p.relative_to(ROOT).as_posix()
                                                         for p in (ROOT / "docs").glob("*.md"))])
def test_every_relative_link_leads_to_a_file_and_heading(page):
    source = ROOT / page
    broken = []
    for target in LINK.findall(source.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s): the machine is offline; nothing to check here
        file, _, anchor = target.partition("#")
        path = (source.parent / file).resolve() if file else source
        if not path.exists() or anchor and anchor not in _anchors(path):
            broken.append(target)
    assert not broken, f"{page}: broken links {broken}"
