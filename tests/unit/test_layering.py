"""The import graph of the package says what the system is: config at the bottom, runtimes on top, no circles.

Every `import` in a module counts, also those inside functions (a lazy import that dodges a circle is still a
circle in the design).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "splitft"


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Package modules `path` imports (a `from .pkg import name` counts `pkg.name` when that is a module)."""
    me, out = _module(path), set()
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if not base.startswith("splitft"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES else base)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("splitft")}
    return {m for m in out if m in MODULES and m != me}


FILES = {p for p in PKG.rglob("*.py") if "proto" not in p.parts}
MODULES = {_module(p) for p in FILES}
GRAPH = {_module(p): _imports(p) for p in FILES}


def _reaches(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in GRAPH.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_there_is_no_import_circle():
    circles = sorted(m for m in GRAPH if m in _reaches(m))
    assert not circles, f"modules on an import circle: {circles}"


def test_config_imports_only_the_error_type_which_imports_nothing():
    outside = {t for m, targets in GRAPH.items() if m == "splitft.config" or m.startswith("splitft.config.")
               for t in targets if not t.startswith("splitft.config.")}
    assert outside == {"splitft.errors"} and GRAPH["splitft.errors"] == set()


def test_importing_the_config_loads_no_torch():
    code = "import sys, splitft.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=PKG.parent).returncode == 0, "import splitft.config " \
        "loaded torch (the package __init__ imports the simulator lazily: keep it so)"


@pytest.mark.parametrize("runtime, other", [("splitft.deploy", "splitft.sim"), ("splitft.sim", "splitft.deploy")])
def test_neither_runtime_imports_the_other(runtime, other):
    crossing = sorted(f"{m} -> {t}" for m in GRAPH if m.startswith(runtime) for t in _reaches(m)
                      if t.startswith(other))
    assert not crossing, crossing


def _top(m: str) -> bool:
    return m in ("splitft", "splitft.cli") or m.startswith(("splitft.sim", "splitft.deploy"))


def test_components_do_not_import_the_runtimes_or_the_cli():
    crossing = sorted(f"{m} -> {t}" for m in GRAPH if not _top(m) for t in GRAPH[m] if _top(t))
    assert not crossing, crossing


def test_only_the_two_grpc_modules_import_grpc():
    def grpc_imported(n: ast.AST) -> bool:
        if isinstance(n, ast.ImportFrom):
            return n.level == 0 and (n.module or "").split(".")[0] == "grpc"
        return isinstance(n, ast.Import) and any(a.name.split(".")[0] == "grpc" for a in n.names)

    users = {_module(p) for p in FILES if any(grpc_imported(n) for n in ast.walk(ast.parse(p.read_text())))}
    assert users == {"splitft.transport.grpc_client", "splitft.transport.grpc_server"}


@pytest.mark.parametrize("core", ["splitft.deploy.turns", "splitft.deploy.rounds"])
def test_a_deployed_rounds_state_needs_no_event_loop(core):
    """The round's rules are plain calls (tested without a loop); the asyncio shell around them is elsewhere."""
    tree = ast.parse((PKG.parent / (core.replace(".", "/") + ".py")).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in names if m.split(".")[0] in ("asyncio", "grpc", "concurrent")}, names
    assert not {m for m in GRAPH[core] if m.startswith(("splitft.deploy.steps", "splitft.deploy.worker",
                                                         "splitft.deploy.coordinator"))}


def _readme_layout() -> list[str]:
    """The package entries of the Layout block in docs/design.md, in their order ('config.py' -> 'config', 'sim/' ->
    'sim')."""
    text = (PKG.parent / "docs" / "design.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    entries = [line.split()[0] for line in block.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    return [e.removesuffix(".py").rstrip("/").replace("/", ".") for e in entries]


def test_the_readme_layout_lists_every_module_below_what_imports_it():
    order = _readme_layout()

    def rank(module: str) -> int:
        name = module.removeprefix("splitft.")
        hits = [i for i, e in enumerate(order) if name == e or name.startswith(e + ".")]
        assert hits, f"{module} is missing from the Layout in docs/design.md"
        return hits[-1]

    wrong = sorted(f"{m} -> {t}" for m in GRAPH if m != "splitft" for t in GRAPH[m] if rank(t) > rank(m))
    assert not wrong, f"the Layout in docs/design.md lists these imports upside down: {wrong}"
