"""Send a run's round records to a tracker (TensorBoard, W&B, MLflow, ...) through accelerate's trackers.

metrics.jsonl stays the record; a tracker gets scalars made from its `round` and `eval` records as they are
written, with the round as the step:

    eval/loss, eval/ppl, eval/acc         the global model on the held-out data
    train/loss, train/lr                  the round's mean step loss, the lr of its last step
    bytes/<kind>                          cumulative bytes by kind (activations_up, grad_activations_down, ...)
    cut/client_<c>                        each client's cut this round
    time/round_virtual_s, time/virtual_s, time/wall_s

    tracker = open_tracker(cfg)     # None for metrics.report_to=none
    logger.tracker = tracker        # MetricsLogger forwards each record it writes
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from .config import Config
from .errors import UserError

ROUND_KEYS = {"train_loss": "train/loss", "lr": "train/lr", "eval_loss": "eval/loss", "eval_ppl": "eval/ppl",
              "eval_acc": "eval/acc", "round_virtual_s": "time/round_virtual_s", "virtual_time": "time/virtual_s",
              "wall_time": "time/wall_s"}


def tracker_names() -> tuple[str, ...]:
    """`none` and every tracker accelerate knows (installed or not)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return ("none", *LOGGER_TYPE_TO_CLASS)


def check_tracker(name: str) -> None:
    """Raises UserError for a tracker accelerate does not know or whose library is not installed (before a run
    starts, not at its first round)."""
    if name == "none":
        return
    from accelerate.utils import imports

    if name not in tracker_names():
        raise UserError(f"metrics.report_to: must be none, {', '.join(tracker_names()[1:])}; got '{name}'")
    available = getattr(imports, f"is_{name}_available", lambda: True)
    if not available():
        package = {"tensorboard": "tensorboard", "comet_ml": "comet-ml"}.get(name, name)
        raise UserError(f"metrics.report_to={name}: its library is not installed; pip install {package} (or set "
                        f"metrics.report_to=none)")


class Tracker:
    """One accelerate tracker, fed the scalars of round and eval records."""

    def __init__(self, name: str, out_dir: Path, run_name: str, config: dict[str, Any]):
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        cls = LOGGER_TYPE_TO_CLASS[name]
        self.name = name
        self.impl = cls(run_name, logging_dir=str(out_dir / name)) if cls.requires_logging_directory else cls(run_name)
        self.impl.start()
        try:
            self.impl.store_init_configuration(_flat(config))
        except Exception as e:  # hparams are a courtesy; some trackers refuse some values
            print(f"warning: metrics.report_to={name}: the config was not stored as hyperparameters: {e}",
                  file=sys.stderr)

    def record(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if values:
            self.impl.log(values, step=int(record["round"]))

    def close(self) -> None:
        self.impl.finish()


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The tracker's scalars of one record (round and eval records only)."""
    if record.get("kind") not in ("round", "eval"):
        return {}
    out = {ROUND_KEYS[k]: float(v) for k, v in record.items() if k in ROUND_KEYS and isinstance(v, (int, float))
           and not isinstance(v, bool) and (k != "wall_time" or record["kind"] == "round")}
    for kind, n in (record.get("bytes") or {}).items():
        out[f"bytes/{kind}"] = float(n)
    for client, cut in (record.get("cuts") or {}).items():
        out[f"cut/client_{client}"] = float(cut)
    return out


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """section.key -> value, lists as text (trackers take scalars and strings)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def open_tracker(cfg: Config, run_name: str = "") -> Tracker | None:
    """The tracker metrics.report_to names, writing under the run directory (None for `none`)."""
    from .config import to_dict

    name = cfg.metrics.report_to
    if name == "none":
        return None
    check_tracker(name)
    out = Path(cfg.metrics.out_dir)
    return Tracker(name, out, re.sub(r"[^\w.-]", "_", run_name or out.name), to_dict(cfg))
