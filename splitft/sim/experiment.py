"""Run the methods (splitft, makespan, sfl-fixed, fedlora, centralized) on the same model, data, partition,
devices and seeds, and print one comparison table.

    splitft experiment --config configs/experiment.yaml [--methods splitft,fedlora] [--target-ppl 30]
Each method runs into <metrics.out_dir>/<method>/ (a normal run directory); a method whose directory already
holds a summary.json is reused, not re-run; one that was interrupted resumes from its checkpoint. The table
goes to stdout and to <out_dir>/experiment.md, the numbers to <out_dir>/experiment.json.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any, Callable

from ..config import Config, ConfigError, save_config, validate
from ..errors import UserError
from .runner import resume_simulation, run_simulation


def _splitft(cfg: Config) -> None:
    cfg.federation.method, cfg.split.policy = "split", "splitft"


def _sfl_fixed(cfg: Config) -> None:  # SplitLoRA-style: one cut for all, one rank everywhere
    cfg.federation.method, cfg.split.policy, cfg.lora.r_cut = "split", "fixed", cfg.lora.r


def _makespan(cfg: Config) -> None:  # SplitFT's r_cut, cuts for round time (policy/makespan.py)
    cfg.federation.method, cfg.split.policy = "split", "makespan"


def _fedlora(cfg: Config) -> None:
    cfg.federation.method = "fedlora"


def _centralized(cfg: Config) -> None:
    cfg.federation.method = "centralized"


METHODS: dict[str, Callable[[Config], None]] = {"splitft": _splitft, "makespan": _makespan, "sfl-fixed": _sfl_fixed,
                                                "fedlora": _fedlora, "centralized": _centralized}


def method_config(base: Config, name: str) -> Config:
    """The base config with one method's settings and its own run directory."""
    cfg = copy.deepcopy(base)
    METHODS[name](cfg)
    cfg.metrics.out_dir = str(Path(base.metrics.out_dir) / name)
    problems = validate(cfg)
    if problems:
        raise ConfigError([f"method {name}: {p}" for p in problems])
    return cfg


def parse_methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise UserError(f"--methods: unknown {unknown or 'empty list'}; choose from {', '.join(METHODS)}")
    return names


def run_experiment(base: Config, methods: list[str], target_ppl: float | None = None) -> dict[str, Any]:
    """Run (or reuse) every method, then compare. Returns {"target_ppl", "methods": {name: row}}."""
    out = Path(base.metrics.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(base, out / "experiment_config.yaml")
    summaries = {}
    for name in methods:
        cfg = method_config(base, name)
        done = Path(cfg.metrics.out_dir) / "summary.json"
        if done.is_file():
            print(f"== {name}: reusing {done}", file=sys.stderr, flush=True)
            summaries[name] = json.loads(done.read_text())
            continue
        if (done.parent / "checkpoints" / "latest").is_file():  # interrupted: go on from its checkpoint
            print(f"== {name}: resuming {done.parent}", file=sys.stderr, flush=True)
            summaries[name] = resume_simulation(done.parent)
            continue
        print(f"== {name}: running into {cfg.metrics.out_dir}", file=sys.stderr, flush=True)
        summaries[name] = run_simulation(cfg)
    target = target_ppl or max(s["final_eval_ppl"] for s in summaries.values())
    result = {"target_ppl": target, "methods": {n: compare_row(s, target) for n, s in summaries.items()}}
    (out / "experiment.json").write_text(json.dumps(result, indent=2))
    table = format_table(result)
    (out / "experiment.md").write_text(table + "\n")
    print(table)
    return result


def time_to(summary: dict[str, Any], target: float, clock: str = "virtual") -> float | None:
    """Seconds on `clock` (virtual | wall) at the end of the first evaluated round whose eval ppl <= target
    (None: never, or a run summarised before wall times were recorded)."""
    times = summary.get(f"{clock}_time_by_round", {})
    for r, ppl in summary["eval_ppl_by_round"].items():
        if int(r) >= 0 and ppl <= target and r in times:
            return times[r]
    return None


def cut_changes(cuts_by_round: dict[str, dict[str, int]]) -> str:
    """'r0 1,1,3; r2 2,1,3': the cuts (client 0, 1, ...) at round 0 and whenever they change."""
    parts, last = [], None
    for r, cuts in cuts_by_round.items():
        now = ",".join(str(cuts[c]) for c in sorted(cuts, key=int))
        if now != last:
            parts.append(f"r{r} {now}")
            last = now
    return "; ".join(parts)


def compare_row(s: dict[str, Any], target: float) -> dict[str, Any]:
    over = [c for c, v in s["clients"].items() if v["memory_gb_budget"] is not None
            and v["memory_gb_needed"] > v["memory_gb_budget"]]
    split = s["method"] == "split"
    return {"final_eval_ppl": s["final_eval_ppl"], "virtual_time_to_target_s": time_to(s, target),
            "wall_time_to_target_s": time_to(s, target, "wall"),
            "virtual_time_s": s["virtual_time_s"], "wall_time_s": s["wall_time_s"], "bytes_up": s["bytes_up"],
            "bytes_down": s["bytes_down"], "cuts": cut_changes(s["cuts_by_round"]) if split else "no split",
            "clients_over_memory": over}


def format_table(result: dict[str, Any]) -> str:
    target = f"{result['target_ppl']:.2f}"
    head = (f"| method | final eval ppl | virtual time to ppl {target} | wall time to ppl {target} | virtual time "
            f"| wall time | bytes up | bytes down | clients over memory | cuts (client 0,1,...) by round |")
    lines = [head, "|" + "---|" * 10]
    for name, r in result["methods"].items():
        reach = [r["virtual_time_to_target_s"], r.get("wall_time_to_target_s")]
        reach_s = ["not reached" if t is None else f"{t:.1f} s" for t in reach]
        over = ",".join(r["clients_over_memory"]) or "-"
        lines.append(f"| {name} | {r['final_eval_ppl']:.2f} | {reach_s[0]} | {reach_s[1]} "
                     f"| {r['virtual_time_s']:.1f} s | {r['wall_time_s']:.0f} s | {r['bytes_up'] / 1e6:.1f} MB "
                     f"| {r['bytes_down'] / 1e6:.1f} MB | {over} | {r['cuts']} |")
    return "\n".join(lines)
