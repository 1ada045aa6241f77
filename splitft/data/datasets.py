"""Load local text or instruction data with `datasets`, tokenize it, and batch it (right padding).

Instruction rows (prompt + response columns) are rendered with the tokenizer's chat template and trained with
loss on response tokens only (prompt labels = -100). Plain-text rows (text column) train on every token.

    examples, info = load_examples(cfg.data, tokenizer)   # list[Example], tokenization stats
    batch = collate(examples[:4], pad_id)                 # input_ids/attention_mask/labels, each (B, T)
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import DataConfig
from ..errors import Mismatch, UserError
from ..loss import IGNORE
from ..seeding import load_random_state, random_state

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
BUILTIN_DATA = {"shakespeare_dialogue": "shakespeare_dialogue.jsonl"}


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    """Same length as input_ids; IGNORE where no loss is taken (prompt tokens)."""
    category: str | None = None
    """Value of data.category_column, when set (used by the dirichlet partitioner only)."""

    def __len__(self) -> int:
        return len(self.input_ids)


def resolve_path(path: str) -> Path:
    """Local file for `data.path` (builtin:<name> lives inside the installed package)."""
    if path.startswith("builtin:"):
        name = path.split(":", 1)[1]
        if name not in BUILTIN_DATA:
            raise UserError(f"data.path: unknown builtin dataset '{name}'; known: {', '.join(BUILTIN_DATA)}")
        return Path(str(resources.files("splitft.data") / "assets" / BUILTIN_DATA[name]))
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"data.path: file '{path}' not found")
    if p.suffix not in FORMATS:
        raise UserError(f"data.path: unsupported file type '{p.suffix}'; use one of {', '.join(FORMATS)}")
    return p


def read_rows(cfg: DataConfig) -> list[dict[str, Any]]:
    """Rows of the data file as dicts (through `datasets`, no cache written next to the data)."""
    import datasets

    datasets.disable_progress_bars()
    path = resolve_path(cfg.path)
    if path.stat().st_size == 0:
        raise UserError(f"data.path: '{cfg.path}' holds no samples")
    try:
        ds = datasets.load_dataset(FORMATS[path.suffix], data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types for unreadable files
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"data.path: cannot read '{cfg.path}': {reason}") from None
    if len(ds) == 0:
        raise UserError(f"data.path: '{cfg.path}' holds no samples")
    return ds.to_list()


def _columns(rows: list[dict[str, Any]], cfg: DataConfig) -> tuple[str, ...]:
    cols = set(rows[0])
    if cfg.category_column and cfg.category_column not in cols:
        raise UserError(f"data.category_column: '{cfg.category_column}' is not a column of '{cfg.path}'; "
                        f"columns: {sorted(cols)}")
    if {cfg.prompt_column, cfg.response_column} <= cols:
        return (cfg.prompt_column, cfg.response_column)
    if cfg.text_column in cols:
        return (cfg.text_column,)
    raise UserError(
        f"data: columns {sorted(cols)} have neither data.prompt_column='{cfg.prompt_column}' + "
        f"data.response_column='{cfg.response_column}' nor data.text_column='{cfg.text_column}'; set them to "
        f"the names in your file"
    )


def _check_text(rows: list[dict[str, Any]], column: str, path: str) -> None:
    """A text column must hold text: a list, an object or a missing value would be trained as its Python repr
    ("['x', 'y']", "None"), so it is refused; numbers among text are trained as their text, with a warning."""
    kinds: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        v = row.get(column)
        kind = "text" if isinstance(v, str) else "missing" if v is None else \
            "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__
        kinds.setdefault(kind, []).append(i)
    odd = {k: rows_ for k, rows_ in kinds.items() if k not in ("text", "number")}
    if odd:
        counts = ", ".join(f"{len(r)} {k} (row {r[0] + 1})" for k, r in sorted(odd.items()))
        raise UserError(f"data: column '{column}' of '{path}' must hold text in every row; it holds {counts} among "
                        f"{len(rows)} rows; fix or remove those rows")
    if "number" in kinds and "text" in kinds:
        print(f"warning: data: column '{column}' of '{path}' holds {len(kinds['number'])} number(s) among its "
              f"{len(rows)} rows (row {kinds['number'][0] + 1} first); they are trained as their text",
              file=sys.stderr)


def _ids(out: Any) -> list[int]:
    """apply_chat_template returns a list in some transformers versions and a BatchEncoding in others."""
    return list(out["input_ids"] if not isinstance(out, list) else out)


def tokenize_row(row: dict[str, Any], columns: tuple[str, ...], tokenizer: Any) -> Example:
    """One row -> Example (untruncated). Instruction rows use the chat template when the tokenizer has one."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if len(columns) == 1:
        ids = tokenizer(str(row[columns[0]]), add_special_tokens=True)["input_ids"] + eos
        return Example(ids, list(ids))
    prompt, response = str(row[columns[0]]), str(row[columns[1]])
    if getattr(tokenizer, "chat_template", None):
        p_ids = _ids(tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                   add_generation_prompt=True, tokenize=True))
    else:
        p_ids = tokenizer(prompt + "\n", add_special_tokens=True)["input_ids"]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + eos
    return Example(p_ids + r_ids, [IGNORE] * len(p_ids) + r_ids)


def load_examples(cfg: DataConfig, tokenizer: Any, seed: int) -> tuple[list[Example], dict[str, int]]:
    """Read, shuffle (seeded), cap at `max_samples`, tokenize and truncate to `max_length`.

    Returns:
        examples, and stats {"samples", "truncated", "dropped_no_target"}.

    Raises:
        UserError: missing file, empty data, unknown columns, or no sample left with a training target.
    """
    rows = read_rows(cfg)
    columns = _columns(rows, cfg)
    for column in columns:
        _check_text(rows, column, cfg.path)
    random.Random(seed).shuffle(rows)
    if cfg.max_samples:
        rows = rows[: cfg.max_samples]
    examples, truncated, dropped = [], 0, 0
    for row in rows:
        ex = tokenize_row(row, columns, tokenizer)
        if len(ex) > cfg.max_length:
            truncated += 1
            ex = Example(ex.input_ids[: cfg.max_length], ex.labels[: cfg.max_length])
        if cfg.category_column:
            ex.category = str(row[cfg.category_column])
        if sum(lab != IGNORE for lab in ex.labels[1:]) == 0:
            dropped += 1  # prompt filled max_length: nothing left to learn from
            continue
        examples.append(ex)
    if len(examples) < 2:
        raise UserError(f"data: only {len(examples)} usable samples in '{cfg.path}' (need at least 2); "
                        f"raise data.max_length or add data")
    return examples, {"samples": len(examples), "truncated": truncated, "dropped_no_target": dropped}


def split_eval(examples: list[Example], fraction: float, max_eval: int) -> tuple[list[Example], list[Example]]:
    """Hold out the last `fraction` (at most `max_eval`, at least 1) of already-shuffled examples."""
    n_eval = max(1, min(max_eval, int(len(examples) * fraction)))
    return examples[:-n_eval], examples[-n_eval:]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask (1 = token), labels (IGNORE on padding)."""
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e)
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(examples: list[Example], batch_size: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """`examples` in order, `batch_size` at a time, collated (evaluation: every example once)."""
    for i in range(0, len(examples), batch_size):
        yield collate(examples[i : i + batch_size], pad_id)


class BatchStream:
    """Endless seeded stream of batches over one client's examples (reshuffled every epoch)."""

    def __init__(self, examples: list[Example], batch_size: int, pad_id: int, seed: int):
        assert examples, "a client needs at least one example"
        self.examples, self.batch_size, self.pad_id = examples, batch_size, pad_id
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def next(self) -> dict[str, torch.Tensor]:
        picked = []
        while len(picked) < self.batch_size:
            if not self.order:
                self.order = list(range(len(self.examples)))
                self.rng.shuffle(self.order)
            picked.append(self.examples[self.order.pop()])
        return collate(picked, self.pad_id)

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands: its generator and what is left of this epoch's order."""
        return {"rng": random_state(self.rng), "order": list(self.order)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Raises `Mismatch` for a position this stream's examples do not have (other data than the run's)."""
        order = list(state["order"])
        n = len(self.examples)
        if not all(isinstance(i, int) and 0 <= i < n for i in order) or len(set(order)) != len(order):
            odd = next((i for i in order if not (isinstance(i, int) and 0 <= i < n)), "a repeated one")
            raise Mismatch(f"the saved data position names sample {odd!r} of a client that has {n} samples")
        load_random_state(self.rng, state["rng"])
        self.order = order
