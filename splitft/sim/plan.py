"""`splitft plan --config FILE [overrides] [--json]`: what each cut policy would assign, and the round time the
clock predicts for it, without training.

For the federation in the config (its devices, model, batch shape, codec, ranks, server), prints per policy
every client's cut, the predicted seconds of a round (`cost.round_time`, the virtual clock's model: parallel
clients, one FIFO server queue; padded length taken as data.max_length, so times are upper bounds) and the
clients its cuts put over their memory budget. Policies: fixed-1, fixed-2, fixed-4, fixed-best (the fastest
fixed cut that fits every client's memory, or the fastest of all when none does), resource, splitft (its first
decision: the resource rule), makespan and oracle (exact search where feasible, else the best found; `exact`
says which). Below the table: a client's memory model (base + per block) with and without activation
checkpointing (train.activation_checkpointing), and how much longer or shorter each policy's round would be
with the other setting; and each policy's round with federation.server_batch as configured and the other way (1,
or every client's turn joined: n_clients), priced with heterogeneity.server_step_s. Loads the model's weights (for
its shape), no data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..build import Setup, build_model, compute_of
from ..config import Config, SplitConfig, tail_cut
from ..cuts import smallest_cut
from ..data.datasets import DataStats
from ..devices import client_profiles
from ..policy import ClientStats, CutBounds, ResourcePolicy, max_feasible_cut
from ..policy.makespan import MakespanPolicy, RoundCosts, oracle
from .methods import client_stats, cost_model, cut_bounds, round_costs


def plan(cfg: Config) -> dict[str, Any]:
    """{"policies": {name: {"cuts": {client_id: cut}, "round_s": s, "over_memory": [...], ...}}, ...}."""
    peft, family, tokenizer, device = build_model(cfg)
    no_data = DataStats("none", 0, 0, 0, {})  # the plan prices shapes; it reads no data
    setup = Setup(cfg, peft, family, tokenizer, [], [], no_data, device, [], compute_of(cfg))
    devices = dict(enumerate(client_profiles(cfg.heterogeneity, cfg.federation.n_clients, cfg.federation.seed)))
    stats = client_stats(devices)
    bounds = cut_bounds(setup)
    result = plan_policies(round_costs(setup), bounds, stats, cfg.split)
    other = dataclasses.replace(setup, compute=dataclasses.replace(setup.compute,
                                                                   checkpointing=not setup.compute.checkpointing))
    flipped = plan_policies(round_costs(other), cut_bounds(other), stats, cfg.split)
    k = cfg.federation.server_batch
    joined = dataclasses.replace(cfg, federation=dataclasses.replace(
        cfg.federation, server_batch=1 if k > 1 else cfg.federation.n_clients))
    rejoined = plan_policies(round_costs(dataclasses.replace(setup, cfg=joined)), bounds, stats, cfg.split)
    return {**result, "activation_checkpointing": setup.compute.checkpointing,
            "server_batch": k, "server_step_s": cfg.heterogeneity.server_step_s,
            "server_first": (first := smallest_cut(cfg, bounds)),
            "server_memory_gb": server_memory(setup, first, k),
            "with_server_batch": {"server_batch": joined.federation.server_batch,
                                  "round_s": {n: r["round_s"] for n, r in rejoined["policies"].items()}},
            "without_that": {"activation_checkpointing": other.compute.checkpointing,
                             "memory_gb": flipped["memory_gb"],
                             "round_s": {n: r["round_s"] for n, r in flipped["policies"].items()}},
            "server_tflops": cfg.heterogeneity.server_tflops, "devices": {str(c): d.name for c, d in devices.items()}}


def server_memory(setup: Setup, first: int, k: int) -> dict[str, float]:
    """The server's estimated memory (`CostModel.server_gb`: blocks [first, L) and the head, what a step keeps
    for its backward) for one client step and for k joined (k x the batch: a joined step keeps every client's
    activations at once)."""
    cost, cfg = cost_model(setup), setup.cfg
    b, t, n = cfg.train.batch_size, cfg.data.max_length, setup.n_layer
    end = tail_cut(cfg, n)
    one = cost.server_gb(first, end or n, b, t, head=end is None)
    return {"server_batch=1": one, f"server_batch={k}": cost.server_gb(first, end or n, k * b, t, head=end is None)}


def plan_policies(costs: RoundCosts, bounds: CutBounds, stats: dict[int, ClientStats], s: SplitConfig) -> dict:
    """Every policy's first assignment for these clients, its predicted round and who it puts over memory."""
    assignments: dict[str, dict[int, int]] = {}
    for k in (1, 2, 4):
        if k < bounds.n_layer:
            assignments[f"fixed-{k}"] = dict.fromkeys(stats, k)
    assignments["fixed-best"] = _best_fixed(costs, stats, bounds)
    assignments["resource"] = ResourcePolicy(bounds, s.cut).assign(list(stats.values()), {}, 0).cuts
    assignments["splitft"] = dict(assignments["resource"])  # SplitFT's first decision is the resource rule
    makespan = MakespanPolicy(bounds, costs, s.cut, gamma=s.gamma, period=s.period, tolerance=s.tolerance,
                              hysteresis=s.hysteresis)
    assignments["makespan"] = makespan.assign(list(stats.values()), {}, 0).cuts
    best, _, exact = oracle(costs, list(stats.values()), bounds)
    assignments["oracle"] = best
    out = {name: _row(cuts, costs, stats, bounds) for name, cuts in assignments.items()}
    out["oracle"]["exact"] = exact
    return {"policies": out, "memory_gb": {"base": bounds.base_gb, "per_block": bounds.block_gb}}


def _best_fixed(costs: RoundCosts, stats: dict[int, ClientStats], bounds: CutBounds) -> dict[int, int]:
    options = [dict.fromkeys(stats, k) for k in range(bounds.cut_min, bounds.hi + 1)]
    fitting = [o for o in options if all(k <= max_feasible_cut(stats[c], bounds) for c, k in o.items())]
    return min(fitting or options, key=lambda cuts: costs.round_s(cuts, stats))


def _row(cuts: dict[int, int], costs: RoundCosts, stats: dict[int, ClientStats], bounds: CutBounds) -> dict:
    over = [str(c) for c, k in cuts.items() if bounds.base_gb + k * bounds.block_gb > stats[c].memory_gb]
    return {"cuts": {str(c): k for c, k in cuts.items()}, "round_s": costs.round_s(cuts, stats),
            "over_memory": over}


def format_plan(result: dict[str, Any]) -> str:
    """A markdown table: policy, predicted seconds per round, speed-up over fixed-2, cuts, clients over memory."""
    rows = result["policies"]
    ref = rows.get("fixed-2", next(iter(rows.values())))["round_s"]
    lines = ["| policy | round (s) | vs fixed-2 | cuts (client 0,1,...) | over memory |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        label = name + ("" if name != "oracle" else " (exact)" if r.get("exact") else " (best found)")
        cuts = ",".join(str(r["cuts"][c]) for c in sorted(r["cuts"], key=int))
        lines.append(f"| {label} | {r['round_s']:.2f} | {ref / r['round_s']:.2f}x | {cuts} | "
                     f"{','.join(r['over_memory']) or '-'} |")
    if "without_that" in result:
        lines += ["", _memory_line(result)]
    if "with_server_batch" in result:
        lines += ["", _batch_line(result)]
    return "\n".join(lines)


def _batch_line(result: dict[str, Any]) -> str:
    """Each policy's round with the configured federation.server_batch and with the other setting, and the
    server's memory for one client step and for the configured joined ones."""
    other = result["with_server_batch"]
    ratios = [other["round_s"][n] / r["round_s"] for n, r in result["policies"].items()]
    memory = ", ".join(f"{gb:.3f} GB at {name}" for name, gb in result["server_memory_gb"].items())
    return (f"federation.server_batch={result['server_batch']} (as configured; heterogeneity.server_step_s="
            f"{result['server_step_s']:g} s per server step); with server_batch={other['server_batch']} each "
            f"policy's round would take {min(ratios):.2f}-{max(ratios):.2f}x as long. Server memory (estimate, "
            f"its blocks from {result['server_first']}): {memory}")


def _memory_line(result: dict[str, Any]) -> str:
    """A client's memory model with the configured activation checkpointing and with the other setting."""
    on, other = result["activation_checkpointing"], result["without_that"]

    def gb(m: dict[str, float]) -> str:
        return f"{m['base']:.3f} GB + {m['per_block']:.3f} GB per block"

    ratios = [other["round_s"][n] / r["round_s"] for n, r in result["policies"].items()]
    return (f"client memory {'with' if on else 'without'} activation checkpointing (as configured): "
            f"{gb(result['memory_gb'])}; {'without' if on else 'with'} it: {gb(other['memory_gb'])}, each policy's "
            f"round (its cuts decided again for that memory) {min(ratios):.2f}-{max(ratios):.2f}x as long")
