"""Run a whole federation in one process over the in-process transport and write a run directory.

    splitft simulate --config configs/default.yaml federation.rounds=2
writes <out_dir>/config.yaml, metrics.jsonl, summary.json and adapter/ (loadable with
`peft.PeftModel.from_pretrained(base_model, "<out_dir>/adapter")`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import checkpoint
from ..build import build_setup, check, precision_line
from ..config import Config
from ..devices import PROFILES
from ..errors import UserError
from ..measure import peak_memory
from ..metrics import MetricsLogger, NullLogger
from ..records import read_records
from ..registry import check_names
from ..rundir import (
    RunLock,
    export_adapter,
    open_records,
    prepare_run_dir,
    refuse_existing_run,
    run_config,
    truncate_lines,
    write_json,
)
from ..track import open_tracker
from .federation import Federation
from .methods import METHODS, build_federation, check_placement, client_report
from .profiles import device_problems


def sim_problems(cfg: Config) -> list[str]:
    """The simulator's own checks: its method and device-profile names, its device tiers."""
    return check_names(cfg, (METHODS, PROFILES)) + device_problems(cfg.heterogeneity, cfg.federation.n_clients)


def run_simulation(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Build, train `federation.rounds` rounds, evaluate, export; returns the summary also written to disk.

    With `resume`, `cfg` is the run's own config.yaml: the run continues after its latest checkpoint, and
    metrics.jsonl is cut back to what it held then (the rounds after it are run again, identically). The run
    directory is this process's while it runs (`RunLock`).
    """
    with RunLock(Path(cfg.metrics.out_dir)) as lock:
        return _simulate(cfg, resume, lock)


def _simulate(cfg: Config, resume: bool, lock: RunLock) -> dict[str, Any]:
    from tqdm import tqdm

    check(cfg, sim_problems)
    out = Path(cfg.metrics.out_dir)
    if resume:
        lock.take()
        saved = checkpoint.load(out)
        if (out / "summary.json").exists():
            raise UserError(f"--resume: '{out}' already finished (summary.json exists); nothing to resume")
    else:
        refuse_existing_run(cfg)
    setup = build_setup(cfg)
    print(setup.data_line(), file=sys.stderr)
    print(precision_line(setup.compute), file=sys.stderr)
    start = 0
    if resume:  # build-time records (setup, the first cut decision) are in metrics.jsonl already
        fed = build_federation(setup, NullLogger())
        checkpoint.check_position(out, saved, cfg.federation.rounds - 2, first_record=-1)  # none after the last
        checkpoint.check_identity(out, saved)
        start, run_id = saved["round"] + 1, saved.get("run")
        checkpoint.restore(out, saved["federation"], fed.state_dict, fed.load_state_dict)  # before the cut below
        logger = MetricsLogger(truncate_lines(out / "metrics.jsonl", saved["metrics_lines"]),
                               offset=saved["wall_time"])
        fed.logger = logger
        rounds = read_records(out / "metrics.jsonl", "round")
        print(f"resuming {out} after round {saved['round']}", file=sys.stderr)
    else:
        for cid, o in check_placement(setup).items():  # refused before the run directory is written
            print(f"warning: client {cid} ({o['device']}) runs over its memory budget: cut {o['cut']} needs "
                  f"{o['memory_gb_needed']:g} GB of {o['memory_gb_budget']:g} GB (split.allow_over_memory=true)",
                  file=sys.stderr)
        prepare_run_dir(cfg)
        lock.take()
        logger, run_id = open_records(cfg, "simulate")
        fed = build_federation(setup, logger)
    logger.tracker = open_tracker(cfg)  # metrics.report_to: round records to TensorBoard & co. as well
    f = cfg.federation
    total = (f.rounds - start) * f.local_steps * (f.clients_per_round or f.n_clients)
    bar = tqdm(total=total, desc=f"{f.method} steps", unit="step", disable=not cfg.metrics.progress, file=sys.stderr)
    fed.on_step = lambda r: _tick(bar, r)
    fed.on_phase = _progress_phases(bar, f"{f.method} steps")
    if not resume:
        rounds = [logger.log("round", round=-1, **fed.evaluate(-1))]  # the pretrained model, before any step
        bar.write(f"round -1 (pretrained): eval_ppl={rounds[0]['eval_ppl']:.2f}", file=sys.stderr)
    for r in range(start, f.rounds):
        due = (r + 1) % cfg.metrics.eval_every == 0 or r == f.rounds - 1
        rec = fed.run_round(r, evaluate=due)
        rounds.append(rec)
        bar.write(_round_line(rec), file=sys.stderr)
        every = cfg.metrics.checkpoint_every
        if every and (r + 1) % every == 0 and r < f.rounds - 1:
            checkpoint.save(out, r, {"round": r, "run": run_id, "metrics_lines": logger.lines,
                                     "wall_time": logger.elapsed(), "federation": fed.state_dict()})
    bar.close()
    evals = [r for r in rounds if "eval_cut" in r]  # the last evaluation defines the model the run reports
    export_adapter(setup.peft, fed.server.global_model(evals[-1]["eval_cut"]), out / "adapter")
    summary = _summary(cfg, rounds, fed, logger.elapsed(), client_report(setup, fed, rounds))
    print(f"peak memory of the simulation (every party in this one process): {summary['peak_memory']}",
          file=sys.stderr)
    write_json(out / "summary.json", summary)
    logger.close()
    return summary


def resume_simulation(run_dir: str | Path) -> dict[str, Any]:
    """Continue the run in `run_dir` from its latest checkpoint, with the run's own config.yaml."""
    return run_simulation(run_config(run_dir), resume=True)


def _progress_phases(bar: Any, label: str) -> Callable[[str, int], None]:
    """Evaluation shows as its own phase on the bar, and its time is left out of the step rate and the ETA
    (tqdm's `unpause`), so the ETA counts training steps only."""

    def on_phase(phase: str, round_: int) -> None:
        if phase == "evaluate":
            bar.set_description_str("evaluating the pretrained model" if round_ < 0 else f"evaluating round {round_}")
        else:
            bar.unpause()
            bar.set_description_str(label)

    return on_phase


def _round_line(rec: dict[str, Any]) -> str:
    loss = rec["train_loss"]
    line = f"round {rec['round']}: train_loss={'-' if loss is None else f'{loss:.4f}'}"
    if "eval_ppl" in rec:
        line += f" eval_ppl={rec['eval_ppl']:.2f} eval_acc={rec['eval_acc']:.3f}"
    line += f" bytes_up={rec['bytes_up'] / 1e6:.1f}MB bytes_down={rec['bytes_down'] / 1e6:.1f}MB"
    line += f" virtual_time={rec['virtual_time']:.1f}s cuts={','.join(map(str, rec['cuts'].values()))}"
    if rec.get("dropped"):
        line += f" dropped={','.join(rec['dropped'])}"
    return line


def _summary(cfg: Config, rounds: list[dict[str, Any]], fed: Federation, wall: float,
             clients: dict[str, Any]) -> dict[str, Any]:
    evals = [r for r in rounds if "eval_ppl" in r]
    trained = rounds[1:]
    return {"method": cfg.federation.method, "policy": cfg.split.policy if cfg.federation.method == "split" else None,
            "initial_eval_ppl": evals[0]["eval_ppl"], "final_eval_ppl": evals[-1]["eval_ppl"],
            "final_eval_acc": evals[-1]["eval_acc"], "rounds": len(trained),
            "eval_ppl_by_round": {str(r["round"]): r["eval_ppl"] for r in evals},
            "virtual_time_by_round": {str(r["round"]): r["virtual_time"] for r in trained},
            "wall_time_by_round": {str(r["round"]): r["wall_time"] for r in trained},
            "cuts_by_round": {str(r["round"]): r["cuts"] for r in trained},
            "bytes": fed.transport.counter.totals(), "bytes_up": sum(r["bytes_up"] for r in trained),
            "bytes_down": sum(r["bytes_down"] for r in trained), "virtual_time_s": fed.virtual_time,
            "wall_time_s": round(wall, 2), "clients": clients, "peak_memory": peak_memory()}


def _tick(bar: Any, step: dict[str, Any]) -> None:
    """One step done: the bar moves and shows its loss."""
    bar.update(1)
    bar.set_postfix(loss=f"{step['loss']:.3f}")
