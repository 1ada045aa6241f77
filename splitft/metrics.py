"""Run records: one JSON object per line in `<run>/metrics.jsonl`, kinds `step` and `round`.

step:  round, step, client_id, cut, loss, n_tokens, bytes_up, bytes_down, wall_time
round: round, clients, cuts {client_id: cut}, train_loss, eval_loss, eval_ppl, eval_acc,
       bytes {activations_up, labels_up, grad_activations_down, lora_up, lora_down, eval_up, eval_down}
       (cumulative), bytes_up, bytes_down (training traffic this round), wall_time (s since start)
`NullLogger` takes the same calls and writes nothing (library use without a run directory).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


class MetricsLogger:
    def __init__(self, path: str | Path, offset: float = 0.0):
        """Appends to `path`; `offset` seconds are added to wall_time (a resumed run continues its clock)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lines = len(self.path.read_text().splitlines()) if self.path.exists() else 0
        self._f = self.path.open("a")
        self.t0 = time.perf_counter() - offset

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, kind: str, **record: Any) -> dict[str, Any]:
        record = {"kind": kind, **record, "wall_time": round(self.elapsed(), 4)}
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        self.lines += 1
        return record

    def close(self) -> None:
        self._f.close()


class NullLogger(MetricsLogger):
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def log(self, kind: str, **record: Any) -> dict[str, Any]:
        return {"kind": kind, **record, "wall_time": self.elapsed()}

    def close(self) -> None:
        pass


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
