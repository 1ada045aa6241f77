"""Write examples/shakespeare_chat.jsonl: a chat file in the `messages` format (OpenAI/TRL) to try SplitFT on
conversational data, made from the builtin Shakespeare exchanges (splitft/data/assets, public domain).

Each conversation has a system turn and two user/assistant exchanges from the same play, taken in file order;
multi-turn, so `data.train_on` (assistant vs last_assistant) and the chat template matter.

    python scripts/build_chat_example.py
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "splitft" / "data" / "assets" / "shakespeare_dialogue.jsonl"
OUT = ROOT / "examples" / "shakespeare_chat.jsonl"
CONVERSATIONS = 600


def main() -> None:
    by_play: dict[str, list[dict[str, str]]] = defaultdict(list)
    for line in SOURCE.read_text().splitlines():
        row = json.loads(line)
        by_play[row["play"]].append(row)
    chats = []
    while len(chats) < CONVERSATIONS and any(len(rows) >= 2 for rows in by_play.values()):
        for play, rows in sorted(by_play.items()):
            if len(rows) >= 2 and len(chats) < CONVERSATIONS:
                first, second = rows.pop(0), rows.pop(0)
                chats.append({"messages": [
                    {"role": "system", "content": f"You write the next line of dialogue in {play}."},
                    {"role": "user", "content": first["prompt"]}, {"role": "assistant", "content": first["response"]},
                    {"role": "user", "content": second["prompt"]},
                    {"role": "assistant", "content": second["response"]}]})
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("".join(json.dumps(c) + "\n" for c in chats))
    print(f"{len(chats)} conversations -> {OUT}")


if __name__ == "__main__":
    main()
