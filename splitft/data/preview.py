"""`splitft preview`: the first rendered training samples with the tokens that carry loss marked, and what became
of every row (format, samples, truncated, dropped and why). Only the tokenizer loads, no weights.

    splitft preview --config configs/default.yaml data.path=my_chats.jsonl --n 3
prints each sample as the model sees it, loss-carrying spans between ⟦ and ⟧ (green on a terminal), like
`axolotl preprocess --debug`; `--json` prints one object with the token ids and labels as well.
"""

from __future__ import annotations

import sys
from typing import Any

from ..config import Config
from ..loss import IGNORE
from ..model.loader import load_tokenizer
from .datasets import chat_template_of, example_of, has_target, load_examples, parse_rows, split_eval
from .formats import BadRow

OPEN, CLOSE = "⟦", "⟧"
GREEN, RESET = "\033[32m", "\033[0m"


def preview(cfg: Config, n: int) -> dict[str, Any]:
    """The first `n` rows of the data (in file order), rendered and cut as training renders them, and the counts
    over all rows (the training/held-out split as every command makes it)."""
    rows, template = parse_rows(cfg.data), chat_template_of(cfg.data)  # bad data fails before the tokenizer loads
    tokenizer = load_tokenizer(cfg.model.source)
    examples, stats = load_examples(cfg.data, tokenizer, cfg.federation.seed, rows=rows)
    train, held_out = split_eval(examples, cfg.data.eval_fraction, cfg.data.max_eval_samples)
    samples: list[dict[str, Any]] = []
    for row, item in rows.parsed[:n]:
        try:
            ex = example_of(row, item, cfg.data, tokenizer, template)
        except BadRow as e:
            samples.append({"row": row.where, "dropped": str(e)})
            continue
        samples.append({"row": row.where, "tokens": len(ex), "loss_tokens": sum(lab != IGNORE for lab in ex.labels),
                        "truncated": ex.truncated, **({} if has_target(ex) else {"dropped": "no target left"}),
                        "pieces": _pieces(ex.input_ids, ex.labels, tokenizer), "input_ids": ex.input_ids,
                        "labels": ex.labels})
    counts = {**stats.record(), "train_samples": len(train), "eval_samples": len(held_out)}
    return {"path": cfg.data.path, "format": rows.format, "train_on": cfg.data.train_on,
            "truncation": cfg.data.truncation, "max_length": cfg.data.max_length, "counts": counts,
            "samples": samples}


def _pieces(ids: list[int], labels: list[int], tokenizer: Any) -> list[list[Any]]:
    """[text, carries loss] runs of the decoded sample (special tokens kept, as the model sees them)."""
    runs: list[list[Any]] = []
    for i, lab in zip(ids, labels, strict=True):
        loss = lab != IGNORE
        if runs and runs[-1][1] == loss:
            runs[-1][0].append(i)
        else:
            runs.append([[i], loss])
    return [[tokenizer.decode(r, skip_special_tokens=False), loss] for r, loss in runs]


def format_preview(info: dict[str, Any], color: bool | None = None) -> str:
    color = sys.stdout.isatty() if color is None else color
    lines = []
    for k, s in enumerate(info["samples"], 1):
        if "pieces" not in s:
            lines.append(f"--- sample {k}: {s['row']}: dropped: {s['dropped']}")
            continue
        cut = ", truncated" if s["truncated"] else ""
        gone = f", dropped: {s['dropped']}" if "dropped" in s else ""
        lines.append(f"--- sample {k}: {s['row']}: {s['tokens']} tokens, {s['loss_tokens']} carry loss{cut}{gone}")
        lines.append("".join((f"{GREEN}{t}{RESET}" if color else f"{OPEN}{t}{CLOSE}") if loss else t
                             for t, loss in s["pieces"]))
    c = info["counts"]
    dropped = ", ".join(f"{n} {why}" for why, n in c["dropped"].items() if n) or "none"
    lines.append(f"--- {info['path']}: format {info['format']}, loss on {info['train_on']} "
                 f"({'green' if color else OPEN + ' ' + CLOSE}); {c['rows']} rows -> {c['train_samples']} training + "
                 f"{c['eval_samples']} held-out samples; {c['truncated']} truncated to {info['max_length']} tokens "
                 f"(data.truncation={info['truncation']}); dropped: {dropped}")
    return "\n".join(lines)
