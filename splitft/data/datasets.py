"""Read a user's data (a file, a folder of shards, a save_to_disk folder), render it, and batch it (right padding).

Each row is parsed in its format (`formats.py`: chat messages, ShareGPT, Alpaca, prompt/response, plain text),
rendered with the chat template with loss on the assistant turns only (`render.py`; labels = -100 elsewhere) and
cut to data.max_length; nothing is dropped in silence: `DataStats` counts the truncated samples and the dropped
rows by reason, and every runtime prints them (`data_line`).

    examples, stats = load_examples(cfg.data, tokenizer, seed)  # list[Example], DataStats
    batch = collate(examples[:4], pad_id)                        # input_ids/attention_mask/labels, each (B, T)
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from ..config import DataConfig
from ..errors import Mismatch, UserError
from ..loss import IGNORE
from ..seeding import load_random_state, random_state
from .files import STDLIB, Row, columns_in, read_rows
from .formats import BadRow, Parsed, columns_of, detect, parse
from .render import render, truncate
from .stdlib import stdlib_rows

SHOWN_BAD_ROWS = 3
"""Bad rows named one line each; the rest are counted."""
DROP_WARN = 0.10
"""A client that loses more than this share of its rows gets a warning naming the setting to change."""


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    """Same length as input_ids; IGNORE where no loss is taken (prompt tokens)."""
    category: str | None = None
    """Value of data.category_column, when set (used by the dirichlet partitioner only)."""
    truncated: bool = False
    """Cut to data.max_length."""

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Rows:
    """Every row of the configured data, parsed: conversations or texts, and the rows that fit no format."""

    path: str
    format: str
    parsed: list[tuple[Row, Parsed]]
    bad: list[tuple[Row, str]]
    numbers: dict[str, int] = field(default_factory=dict)
    """Text columns holding numbers (trained as their text): column -> count."""
    source: dict[str, Any] = field(default_factory=dict)
    """What identifies data made on this machine (builtin:python_stdlib: interpreter version, content hash)."""

    @property
    def n(self) -> int:
        return len(self.parsed) + len(self.bad)


@dataclass
class DataStats:
    """What became of a data file's rows: samples, cut ones, dropped ones and why."""

    format: str
    rows: int
    samples: int
    truncated: int
    dropped: dict[str, int]
    """reason -> rows: bad_row (fits no format), no_target (no loss-carrying token left within max_length),
    empty (nothing to learn from at any length: an empty text)."""
    source: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"format": self.format, "rows": self.rows, "samples": self.samples, "truncated": self.truncated,
                "dropped": dict(self.dropped), **({"source": self.source} if self.source else {})}


def parse_rows(cfg: DataConfig) -> Rows:
    """Read the data and parse every row in its format (no tokenizer: bad data fails before weights load).

    Raises:
        UserError: unreadable data, columns that fit no format, a category column it does not have, or no row
            that fits its format (the first bad rows named).
    """
    rows = read_rows(cfg)
    columns = columns_in(rows)
    if cfg.category_column and cfg.category_column not in columns:
        raise UserError(f"data.category_column: '{cfg.category_column}' is not a column of '{cfg.path}'; "
                        f"columns: {sorted(columns)}")
    fmt = detect(columns, cfg, cfg.path)
    out = Rows(cfg.path, fmt, [], [], source=stdlib_rows()[1] if cfg.path == STDLIB else {})
    for row in rows:
        try:
            if row.problem is not None:
                raise BadRow(row.problem)
            out.parsed.append((row, parse(row.values, fmt, cfg)))
        except BadRow as e:
            out.bad.append((row, str(e)))
    if not out.parsed:
        raise UserError(f"data: no row of '{cfg.path}' fits the {fmt} format: " + _bad_lines(out.bad, out.n)[0])
    if fmt in ("text", "prompt_response"):
        out.numbers = _number_counts(out.parsed, columns_of(fmt, cfg))
    return out


def _number_counts(parsed: list[tuple[Row, Parsed]], columns: tuple[str, ...]) -> dict[str, int]:
    counts = {c: sum(isinstance(r.values.get(c), (int, float)) and not isinstance(r.values.get(c), bool)
                     for r, _ in parsed) for c in columns}
    return {c: n for c, n in counts.items() if n}


def _bad_lines(bad: list[tuple[Row, str]], n_rows: int) -> list[str]:
    lines = [f"{row.where}: {why}" for row, why in bad[:SHOWN_BAD_ROWS]]
    if len(bad) > SHOWN_BAD_ROWS:
        lines.append(f"... and {len(bad) - SHOWN_BAD_ROWS} more bad rows ({len(bad)} of {n_rows} in all)")
    return lines


def warn_rows(rows: Rows, out: TextIO | None = None) -> None:
    """Bad rows (the first few, then a count) and numbers trained as text, one line each, to stderr."""
    out = out or sys.stderr
    for line in _bad_lines(rows.bad, rows.n):
        print(f"warning: data: {line}; {'they are' if line.startswith('...') else 'the row is'} dropped", file=out)
    for column, n in rows.numbers.items():
        print(f"warning: data: column '{column}' of '{rows.path}' holds {n} number(s) among its {rows.n} rows; "
              f"they are trained as their text", file=out)


def chat_template_of(cfg: DataConfig) -> str | None:
    """The text of `data.chat_template`, or None for the tokenizer's own."""
    if not cfg.chat_template:
        return None
    p = Path(cfg.chat_template).expanduser()
    if not p.is_file():
        raise UserError(f"data.chat_template: file '{cfg.chat_template}' not found")
    return p.read_text(encoding="utf-8")


def load_examples(cfg: DataConfig, tokenizer: Any, seed: int,
                  rows: Rows | None = None) -> tuple[list[Example], DataStats]:
    """Read and parse every row, shuffle (seeded), cap at `max_samples`, render (chat template, loss mask) and
    truncate to `max_length` as `data.truncation` says.

    `rows`: the data already parsed (`parse_rows`), when the caller checked it before loading weights.

    Returns:
        examples, and what became of the rows (`DataStats`).

    Raises:
        UserError: missing file, empty data, unknown columns, every row bad, or fewer than 2 usable samples.
    """
    rows = rows if rows is not None else parse_rows(cfg)
    warn_rows(rows)
    template = chat_template_of(cfg)
    parsed = list(rows.parsed)
    random.Random(seed).shuffle(parsed)
    if cfg.max_samples:
        parsed = parsed[: cfg.max_samples]
    examples, dropped = [], {"bad_row": len(rows.bad), "no_target": 0, "empty": 0}
    for row, item in parsed:
        try:
            ex = example_of(row, item, cfg, tokenizer, template)
        except BadRow as e:
            if dropped["bad_row"] - len(rows.bad) < SHOWN_BAD_ROWS:
                print(f"warning: data: {row.where}: {e}; the row is dropped", file=sys.stderr)
            dropped["bad_row"] += 1
            continue
        if not has_target(ex):  # the target lies beyond max_length, or there is none (an empty line of text)
            dropped["no_target" if ex.truncated else "empty"] += 1
            continue
        examples.append(ex)
    n_rows = len(parsed) + len(rows.bad)
    if len(examples) < 2:
        raise UserError(f"data: only {len(examples)} usable samples in '{cfg.path}' (need at least 2); "
                        f"{_drop_reasons(dropped, cfg)}add data")
    return examples, DataStats(rows.format, n_rows, len(examples), sum(e.truncated for e in examples), dropped,
                               rows.source)


def example_of(row: Row, item: Parsed, cfg: DataConfig, tokenizer: Any, template: str | None) -> Example:
    """One parsed row rendered (loss mask as data.train_on says) and cut to data.max_length. Raises `BadRow`
    when the chat template cannot render it."""
    ids, labels = render(item, tokenizer, "all" if isinstance(item, str) else cfg.train_on, template)
    ids, labels, cut = truncate(ids, labels, cfg.max_length, cfg.truncation, not isinstance(item, str))
    category = str(row.values.get(cfg.category_column)) if cfg.category_column else None
    return Example(ids, labels, category, cut)


def has_target(ex: Example) -> bool:
    """Whether any token after the first carries loss (the first predicts nothing)."""
    return any(lab != IGNORE for lab in ex.labels[1:])


def _drop_reasons(dropped: dict[str, int], cfg: DataConfig) -> str:
    """What to change for the dropped rows, as the start of a sentence ('' when none were dropped)."""
    fixes = []
    if dropped.get("no_target"):
        fixes.append(f"{dropped['no_target']} lost their target beyond data.max_length={cfg.max_length} (raise it"
                     + (" or set data.truncation=prompt_left)" if cfg.truncation == "right" else ")"))
    if dropped.get("bad_row"):
        fixes.append(f"{dropped['bad_row']} fit no format (see the warnings above; fix the rows)")
    if dropped.get("empty"):
        fixes.append(f"{dropped['empty']} were empty")
    return "; ".join(fixes) + "; " if fixes else ""


def data_line(stats: DataStats, train: int, held_out: int, cfg: DataConfig, who: str = "data") -> str:
    """One line for stderr: rows, samples, truncated, dropped and why; a warning above DROP_WARN dropped."""
    n_dropped = sum(stats.dropped.values())
    warn = n_dropped > DROP_WARN * stats.rows
    reasons = _drop_reasons(stats.dropped, cfg).rstrip("; ")
    dropped = f"{n_dropped} dropped ({reasons})" if n_dropped else "0 dropped"
    line = (f"{who}: {stats.rows} rows of {cfg.path} ({stats.format}): {train} training + {held_out} held-out "
            f"samples, {stats.truncated} truncated to data.max_length={cfg.max_length} "
            f"(data.truncation={cfg.truncation}), {dropped}")
    if warn:
        return f"warning: {line}: {n_dropped / stats.rows:.0%} of the rows will not train"
    return line


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
        picked: list[Example] = []
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
