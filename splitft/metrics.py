"""Run records: one JSON object per line in `<run>/metrics.jsonl`, each of a kind in `records.py` (the schema,
which every record is checked against as it is written and read); the first is the `run` record (run_id,
runtime: the run's identity, which a resume checks its checkpoint against). `NullLogger` takes the same calls and
writes nothing (library use without a run directory).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Literal, Unpack, overload

from . import records as r

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

    # each kind's fields, typed by its schema (`records.py`): mypy checks every writer's keywords
    @overload
    def log(self, kind: Literal["run"], **record: Unpack[r.Run]) -> dict[str, Any]: ...
    @overload
    def log(self, kind: Literal["setup"], **record: Unpack[r.Setup]) -> dict[str, Any]: ...
    @overload
    def log(self, kind: Literal["cut_decision"], **record: Unpack[r.CutDecision]) -> dict[str, Any]: ...
    @overload
    def log(self, kind: Literal["codec_costs"], **record: Unpack[r.CodecCosts]) -> dict[str, Any]: ...
    @overload
    def log(self, kind: Literal["step"], **record: Unpack[r.Step]) -> dict[str, Any]: ...
    @overload
    def log(self, kind: Literal["round"], **record: Unpack[r.Round]) -> dict[str, Any]: ...
    @overload
    def log(self, kind: Literal["eval"], **record: Unpack[r.Eval]) -> dict[str, Any]: ...
    @overload
    def log(self, kind: Literal["server"], **record: Unpack[r.Server]) -> dict[str, Any]: ...

    def log(self, kind: r.Kind, **record: Any) -> dict[str, Any]:
        """Write a record of `kind` (its fields as `records.py` has them), stamped with the wall time; a record
        out of its schema raises (a writer out of step with `records.py` is a bug, caught by the tests)."""
        record = _checked({"kind": kind, **record, "wall_time": round(self.elapsed(), 4)})
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
        self.held, self.lines, self.tracker = None, 0, None

    def _write(self, line: str) -> None:
        pass

    def close(self) -> None:
        pass


def _checked(record: dict[str, Any]) -> dict[str, Any]:
    if wrong := r.check(record):
        raise ValueError(f"a record out of its schema (records.py): {'; '.join(wrong)}")
    return record


def run_identity(path: str | Path) -> dict[str, Any] | None:
    """The `run` record that opens a metrics.jsonl (None: none, or a run written before runs had one)."""
    try:
        with Path(path).open() as f:
            rec = json.loads(f.readline())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) and rec.get("kind") == "run" else None


def quantiles(seconds: list[float]) -> dict[str, float]:
    """Count, p50, p99 and max of `seconds` (nearest rank): a client's step latencies for the load test's report."""
    if not seconds:
        return {}
    s = sorted(seconds)

    def at(q: float) -> float:
        return s[min(len(s) - 1, math.ceil(q * len(s)) - 1)]

    return {"n": len(s), "p50": round(at(0.5), 4), "p99": round(at(0.99), 4), "max": round(s[-1], 4)}

