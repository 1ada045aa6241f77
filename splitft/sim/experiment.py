"""Run the methods (splitft, makespan, sfl-fixed, fedlora, centralized) on the same model, data, partition,
devices and seeds, and print one comparison table.

    splitft experiment --config configs/experiment.yaml [--methods splitft,fedlora] [--target-ppl 30]
    splitft experiment --config configs/experiment.yaml --seeds 0,1,2
Each method runs into <metrics.out_dir>/<method>/ (a normal run directory; with --seeds,
<metrics.out_dir>/seed_<s>/<method>/); a method whose directory already holds a summary.json is reused, not
re-run; one that was interrupted resumes from its checkpoint. The table goes to stdout and to
<out_dir>/experiment.md, the numbers to <out_dir>/experiment.json. With several seeds (the same seed = the same
data order, partition and devices for every method) the table gives each metric's mean and 95% confidence
interval over the seeds, and the paired difference against sfl-fixed seed by seed.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, save_config, validate
from ..errors import UserError
from ..evaluate import run_answers
from ..metrics import interval
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


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]: distinct seeds in [0, 2^32)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds: a comma-separated list of integers, e.g. 0,1,2; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or not all(0 <= s < 2 ** 32 for s in seeds):
        raise UserError(f"--seeds: distinct integers in [0, 2^32), e.g. 0,1,2; got {text!r}")
    return seeds


def run_experiment(base: Config, methods: list[str], target_ppl: float | None = None,
                   seeds: list[int] | None = None, generate: int = 0) -> dict[str, Any]:
    """Run (or reuse) every method (for every seed), then compare. Returns {"target_ppl", "methods": {name:
    row}}; with `seeds`, rows of means and intervals, "paired" differences and every seed's "runs". With
    `generate` > 0 every run's adapter also answers that many held-out prompts (ROUGE-L, exact match)."""
    out = Path(base.metrics.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(base, out / "experiment_config.yaml")
    if seeds is None:
        summaries = {name: run_or_reuse(method_config(base, name), name, generate) for name in methods}
        target = target_ppl or max(s["final_eval_ppl"] for s in summaries.values())
        result = {"target_ppl": target, "methods": {n: compare_row(s, target) for n, s in summaries.items()}}
        table = format_table(result)
    else:
        runs = {}
        for seed in seeds:
            seeded = copy.deepcopy(base)
            seeded.federation.seed, seeded.metrics.out_dir = seed, str(out / f"seed_{seed}")
            runs[seed] = {name: run_or_reuse(method_config(seeded, name), f"{name}, seed {seed}", generate)
                          for name in methods}
        target = target_ppl or max(s["final_eval_ppl"] for by in runs.values() for s in by.values())
        rows = {seed: {n: compare_row(s, target) for n, s in by.items()} for seed, by in runs.items()}
        result = {"target_ppl": target, "seeds": seeds, **seed_statistics(rows, methods),
                  "runs": {str(seed): r for seed, r in rows.items()}}
        table = format_seed_table(result)
    (out / "experiment.json").write_text(json.dumps(result, indent=2))
    (out / "experiment.md").write_text(table + "\n")
    print(table)
    return result


def run_or_reuse(cfg: Config, label: str, generate: int = 0) -> dict[str, Any]:
    """The summary of the run in cfg's directory: reused when finished, resumed when interrupted, else run;
    with `generate`, its answers' scores under "answers" (`answers_of`)."""
    done = Path(cfg.metrics.out_dir) / "summary.json"
    if done.is_file():
        print(f"== {label}: reusing {done}", file=sys.stderr, flush=True)
        summary = json.loads(done.read_text())
    elif (done.parent / "checkpoints" / "latest").is_file():  # interrupted: go on from its checkpoint
        print(f"== {label}: resuming {done.parent}", file=sys.stderr, flush=True)
        summary = resume_simulation(done.parent)
    else:
        print(f"== {label}: running into {cfg.metrics.out_dir}", file=sys.stderr, flush=True)
        summary = run_simulation(cfg)
    return {**summary, "answers": answers_of(done.parent, generate)} if generate else summary


def answers_of(run: Path, n: int) -> dict[str, Any]:
    """ROUGE-L and exact match of the run's adapter on n held-out prompts (`splitft evaluate --generate`),
    kept in <run>/answers_<n>.json so a reused run is not asked again."""
    kept = run / f"answers_{n}.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    print(f"   answering {n} held-out prompts with {run}/adapter", file=sys.stderr, flush=True)
    scores = run_answers(run, n)
    kept.write_text(json.dumps(scores, indent=2))
    return scores


STATISTICS = ("final_eval_ppl", "virtual_time_to_target_s", "bytes_up", "rouge_l")


def seed_statistics(rows: dict[int, dict[str, dict[str, Any]]], methods: list[str]) -> dict[str, Any]:
    """Per method and metric the mean and interval over seeds (a run that never reached the target is left out
    of its time, and counted); per method against sfl-fixed, the interval of the seed-by-seed differences."""
    def values(name: str, key: str) -> list[float]:
        return [r[name][key] for r in rows.values() if r[name].get(key) is not None]

    stats = {name: {**{key: interval(values(name, key)) for key in STATISTICS},
                    "not_reached": sum(r[name]["virtual_time_to_target_s"] is None for r in rows.values())}
             for name in methods}
    paired = {}
    if "sfl-fixed" in methods:
        for name in methods:
            if name != "sfl-fixed":
                paired[name] = {key: interval([r[name][key] - r["sfl-fixed"][key] for r in rows.values()
                                               if r[name].get(key) is not None and r["sfl-fixed"].get(key) is not None])
                                for key in ("final_eval_ppl", "virtual_time_to_target_s", "rouge_l")}
    return {"methods": stats, "paired": paired}


def _pm(i: dict[str, Any], digits: int = 2, scale: float = 1.0, unit: str = "") -> str:
    if i["mean"] is None:
        return "-"
    half = "" if i["ci95"] is None else f" ± {i['ci95'] / scale:.{digits}f}"
    return f"{i['mean'] / scale:.{digits}f}{half}{unit}"


def format_seed_table(result: dict[str, Any]) -> str:
    """Means ± 95% CI over seeds, and differences to sfl-fixed paired by seed (a CI that excludes 0: a real
    difference at this many seeds; one that includes it: within noise)."""
    target, n = f"{result['target_ppl']:.2f}", len(result["seeds"])
    rouge = any(s["rouge_l"]["n"] for s in result["methods"].values())
    lines = [f"| method | final eval ppl | Δ ppl vs sfl-fixed | virtual time to ppl {target} | Δ time vs sfl-fixed "
             f"| bytes up |{' ROUGE-L | Δ ROUGE-L vs sfl-fixed |' if rouge else ''} seeds |",
             "|" + "---|" * (9 if rouge else 7)]
    for name, s in result["methods"].items():
        d = result["paired"].get(name, {})
        missed = f" ({s['not_reached']} not reached)" if s["not_reached"] else ""
        answers = f" {_pm(s['rouge_l'], 3)} | {_pm(d['rouge_l'], 3) if d else '-'} |" if rouge else ""
        lines.append(f"| {name} | {_pm(s['final_eval_ppl'])} | {_pm(d['final_eval_ppl']) if d else '-'} "
                     f"| {_pm(s['virtual_time_to_target_s'], 1, unit=' s')}{missed} "
                     f"| {_pm(d['virtual_time_to_target_s'], 1, unit=' s') if d else '-'} "
                     f"| {_pm(s['bytes_up'], 1, 1e6, ' MB')} |{answers} {n} |")
    lines.append(f"\nmean ± half-width of the 95% confidence interval over {n} seeds (Student's t); Δ: paired by "
                 f"seed (the same data, partition and devices)")
    return "\n".join(lines)


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
            "clients_over_memory": over,
            **({"rouge_l": s["answers"]["rouge_l"], "exact_match": s["answers"]["exact_match"]}
               if "answers" in s else {})}


def format_table(result: dict[str, Any]) -> str:
    target = f"{result['target_ppl']:.2f}"
    head = (f"| method | final eval ppl | virtual time to ppl {target} | wall time to ppl {target} | virtual time "
            f"| wall time | bytes up | bytes down | clients over memory | cuts (client 0,1,...) by round |")
    rouge = any("rouge_l" in r for r in result["methods"].values())
    head += " ROUGE-L | exact match |" if rouge else ""
    lines = [head, "|" + "---|" * (12 if rouge else 10)]
    for name, r in result["methods"].items():
        reach = [r["virtual_time_to_target_s"], r.get("wall_time_to_target_s")]
        reach_s = ["not reached" if t is None else f"{t:.1f} s" for t in reach]
        over = ",".join(r["clients_over_memory"]) or "-"
        answers = f" {r['rouge_l']:.3f} | {r['exact_match']:.3f} |" if rouge else ""
        lines.append(f"| {name} | {r['final_eval_ppl']:.2f} | {reach_s[0]} | {reach_s[1]} "
                     f"| {r['virtual_time_s']:.1f} s | {r['wall_time_s']:.0f} s | {r['bytes_up'] / 1e6:.1f} MB "
                     f"| {r['bytes_down'] / 1e6:.1f} MB | {over} | {r['cuts']} |{answers}")
    return "\n".join(lines)
