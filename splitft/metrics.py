"""Run records: one JSON object per line in `<run>/metrics.jsonl`; the first is the `run` record (run_id,
runtime: the run's identity, which a resume checks its checkpoint against), then kinds such as `step` and `round`.

step:  round, step, client_id, cut, loss, lr, n_tokens, bytes_up, bytes_down, wall_time
round: round, clients, cuts {client_id: cut}, train_loss, lr, eval_loss, eval_ppl, eval_acc,
       bytes {activations_up, labels_up, grad_activations_down, lora_up, lora_down, eval_up, eval_down}
       (cumulative), bytes_up, bytes_down (training traffic this round), wall_time (s since start)
`NullLogger` takes the same calls and writes nothing (library use without a run directory).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         15: 2.131, 20: 2.086, 30: 2.042}
"""Student's t 97.5% quantiles by degrees of freedom (a two-sided 95% interval); between entries the next lower
one is used (a wider interval), beyond 30 the normal's 1.96."""


def interval(values: list[float]) -> dict[str, Any]:
    """Mean and the half-width of its 95% confidence interval (Student's t; None for a single value)."""
    n = len(values)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean = statistics.fmean(values)
    if n == 1:
        return {"mean": mean, "ci95": None, "n": 1}
    df = n - 1
    t = 1.96 if df > 30 else T_975[max(k for k in T_975 if k <= df)]
    return {"mean": mean, "ci95": t * statistics.stdev(values) / math.sqrt(n), "n": n}


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


class MetricsLogger:
    def __init__(self, path: str | Path, offset: float = 0.0, hold: bool = False):
        """Appends to `path`; `offset` seconds are added to wall_time (a resumed run continues its clock).
        `hold`: keep the records in memory, touching no file, until `release()` (a resume logs while it builds,
        before its checks have passed; a refused resume must leave the run's files as they were)."""
        self.path = Path(path)
        self.t0 = time.perf_counter() - offset
        self.held: list[str] | None = [] if hold else None
        self.lines = 0
        self.tracker: Any = None
        """A `track.Tracker` each record goes to as well (metrics.report_to); the file stays the record."""
        if not hold:
            self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lines = len(self.path.read_text().splitlines()) if self.path.exists() else 0
        self._f = self.path.open("a")

    def release(self) -> None:
        """Open the file (as it is now) and write the records held so far."""
        held, self.held = self.held or [], None
        self._open()
        for line in held:
            self._write(line)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, kind: str, **record: Any) -> dict[str, Any]:
        record = {"kind": kind, **record, "wall_time": round(self.elapsed(), 4)}
        if self.held is not None:
            self.held.append(json.dumps(record))
        else:
            self._write(json.dumps(record))
        if self.tracker is not None:
            self.tracker.record(record)
        return record

    def _write(self, line: str) -> None:
        self._f.write(line + "\n")
        self._f.flush()
        self.lines += 1

    def close(self) -> None:
        if self.held is None:
            self._f.close()
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None


class NullLogger(MetricsLogger):
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.tracker = None

    def log(self, kind: str, **record: Any) -> dict[str, Any]:
        return {"kind": kind, **record, "wall_time": self.elapsed()}

    def close(self) -> None:
        pass


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


RUN_KIND = "run"
"""The first record of every metrics.jsonl: the run's identity (`run_id`) and the command that began it."""


def run_identity(path: str | Path) -> dict[str, Any] | None:
    """The `run` record that opens a metrics.jsonl (None: none, or a run written before runs had one)."""
    try:
        with Path(path).open() as f:
            rec = json.loads(f.readline())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) and rec.get("kind") == RUN_KIND else None


def quantiles(seconds: list[float]) -> dict[str, float]:
    """Count, p50, p99 and max of `seconds` (nearest rank): a client's step latencies for the load test's report."""
    if not seconds:
        return {}
    s = sorted(seconds)

    def at(q: float) -> float:
        return s[min(len(s) - 1, math.ceil(q * len(s)) - 1)]

    return {"n": len(s), "p50": round(at(0.5), 4), "p99": round(at(0.99), 4), "max": round(s[-1], 4)}

