"""`splitft report RUN_DIR [RUN_DIR ...] [--out DIR]`: plots and a comparison table from finished run directories.

Reads each run's metrics.jsonl (round records) and summary.json; writes to --out:
    ppl_vs_virtual_time.png   held-out perplexity vs simulated seconds on the clients' devices
    ppl_vs_wall_time.png      held-out perplexity vs real seconds of the run
    bytes_per_round.png       training traffic per round by kind (MB), one panel per run, one y scale
    cuts.png                  each client's cut per round: a clients x rounds grid per run, cut in each cell
    ppl_mean_by_round.png     for an experiment run with --seeds (give its folder): each method's mean eval ppl
                              per round over the seeds, with its 95% confidence band
    report.md                 a table comparing the runs, and the figures
Nothing is recomputed: every number comes from the runs' own records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .metrics import interval
from .records import read_records

TRAFFIC = ("activations_up", "labels_up", "grad_activations_down", "lora_up", "lora_down")


@dataclass
class Run:
    name: str
    rounds: list[dict[str, Any]]
    """round records in order, round -1 (the pretrained model) first."""
    summary: dict[str, Any]


def load_run(path: str | Path) -> Run:
    d = Path(path)
    if not (d / "metrics.jsonl").is_file():
        raise UserError(f"report: '{d}' is not a run directory (no metrics.jsonl)")
    records = read_records(d / "metrics.jsonl")
    if not (d / "summary.json").is_file():
        deployed = any(r["kind"] == "server" for r in records)
        hint = ("a deployment's server writes it when every client is done or gone" if deployed else
                f"resume it with `splitft simulate --resume {d}` first")
        raise UserError(f"report: '{d}' has not finished (no summary.json); {hint}")
    return Run(d.name if d.name not in ("", ".") else str(d), rounds_of(records),
               json.loads((d / "summary.json").read_text()))


def rounds_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Round records in order, each with its evaluation. A deployed server logs a round's evaluation as its own
    `eval` record (the clients report it with their next push), merged here into the round's record; the
    pretrained model's evaluation becomes round -1."""
    rounds = {r["round"]: dict(r) for r in records if r["kind"] == "round"}
    for e in (r for r in records if r["kind"] == "eval"):
        rec = rounds.setdefault(e["round"], {"kind": "round", "round": e["round"], "wall_time": e["wall_time"]})
        rec.update({k: v for k, v in e.items() if k.startswith("eval_")})
    return [rounds[k] for k in sorted(rounds)]


def _unique_names(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name} ({seen[r.name]})"


def per_round_bytes(run: Run) -> list[dict[str, float]]:
    """Training traffic of each round by kind, in MB (the records hold cumulative bytes)."""
    out, prev = [], {k: 0 for k in TRAFFIC}
    for r in run.rounds:
        if r["round"] < 0:
            continue
        cur = {k: r["bytes"][k] for k in TRAFFIC}
        out.append({k: (cur[k] - prev[k]) / 1e6 for k in TRAFFIC})
        prev = cur
    return out


def table(runs: list[Run]) -> str:
    head = ("| run | method | policy | rounds | initial ppl | final ppl | virtual time (s) | wall time (s) "
            "| MB up | MB down |")
    rows = [head, "|" + " --- |" * 10]
    for r in runs:
        s = r.summary
        rows.append(f"| {r.name} | {s['method']} | {s.get('policy') or '-'} | {s['rounds']} "
                    f"| {s['initial_eval_ppl']:.2f} | {s['final_eval_ppl']:.2f} | {_num(s.get('virtual_time_s'))} "
                    f"| {s['wall_time_s']:.1f} | {s['bytes_up'] / 1e6:.1f} | {s['bytes_down'] / 1e6:.1f} |")
    return "\n".join(rows)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _ppl_plot(runs: list[Run], x_key: str, xlabel: str, title: str, path: Path) -> Any:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        if x_key == "virtual_time" and r.summary.get("virtual_time_s") is None:
            continue  # a deployment has wall time only
        pts = [(r0.get(x_key, 0.0) if r0["round"] >= 0 else 0.0, r0["eval_ppl"]) for r0 in r.rounds if "eval_ppl" in r0]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=r.name)
    ax.set(xlabel=xlabel, ylabel="held-out perplexity", title=title)
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 62.4, not 6.24 x 10^1
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend()
    else:
        _note(ax, "no run has virtual time\n(a deployment has wall time only)")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return fig


def _panels(n: int, title: str, **kw: Any):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(max(5.0, 4.5 * n), 4.2), squeeze=False, **kw)
    fig.suptitle(title)
    return fig, axes[0]


def _note(ax: Any, text: str) -> None:
    """A panel with nothing to draw says why, in words, instead of showing empty axes."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.3")


def _bytes_plot(runs: list[Run], path: Path) -> Any:
    """Stacked MB per round by kind; one y scale for every panel, so heights compare across runs."""
    import matplotlib.pyplot as plt

    fig, axes = _panels(len(runs), "Training traffic per round, by kind", sharey=True)
    for ax, r in zip(axes, runs, strict=True):
        per = per_round_bytes(r)
        ax.set(xlabel="round", title=r.name)
        if not any(v for p in per for v in p.values()):
            ax.set_xticks([])
            _note(ax, "no traffic\n(nothing crosses a network)")
            continue
        bottom = [0.0] * len(per)
        for kind in TRAFFIC:
            vals = [p[kind] for p in per]
            ax.bar(range(len(per)), vals, bottom=bottom, label=kind)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_xticks(range(len(per)))
    axes[0].set_ylabel("MB")
    handles, labels = next((ax.get_legend_handles_labels() for ax in axes if ax.containers), ([], []))
    fig.tight_layout()
    ncol = len(TRAFFIC) if len(runs) > 1 else 3  # one 5-inch panel holds three kinds' names side by side
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, fontsize=8, frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend below the panels is part of the figure
    plt.close(fig)
    return fig


def cut_grid(run: Run) -> tuple[list[str], list[int], list[list[int | None]]] | None:
    """(client ids, rounds, cut of each client in each round; None where it took no part), or None for a run
    without a split (fedlora, centralized: every client holds the whole model)."""
    if run.summary.get("method", "split") != "split":
        return None
    trained = [x for x in run.rounds if x["round"] >= 0]
    clients = sorted({c for x in trained for c in x["cuts"]}, key=int)
    return clients, [x["round"] for x in trained], [[x["cuts"].get(c) for x in trained] for c in clients]


def _cuts_plot(runs: list[Run], path: Path) -> Any:
    """A clients x rounds grid per run with the cut printed in each cell (equal cuts read as equal), one colour
    scale for every panel; a run without a split says so."""
    import matplotlib.pyplot as plt
    import numpy as np

    grids = [cut_grid(r) for r in runs]
    cuts = [v for g in grids if g for row in g[2] for v in row if v is not None]
    lo, hi = (min(cuts), max(cuts)) if cuts else (0, 1)
    fig, axes = _panels(len(runs), "Cut per client per round (blocks held by the client)")
    for ax, r, g in zip(axes, runs, grids, strict=True):
        ax.set(title=r.name)
        if g is None:
            ax.set(xticks=[], yticks=[])
            _note(ax, "no split\n(every client holds the whole model)")
            continue
        clients, rounds, rows = g
        values = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
        ax.imshow(values, cmap="viridis", vmin=lo, vmax=hi + 0.5, aspect="auto")
        for i, row in enumerate(rows):
            for j, v in enumerate(row):  # dark text on the light (high) end of the colour scale
                light = v is not None and (v - lo) / (hi + 0.5 - lo) > 0.6
                ax.text(j, i, "-" if v is None else str(v), ha="center", va="center", fontsize=10,
                        color="black" if light else "white")
        ax.set(xlabel="round", ylabel="client", xticks=range(len(rounds)), xticklabels=rounds,
               yticks=range(len(clients)), yticklabels=clients)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return fig


def expand(dirs: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Run directories, an experiment's folder run with --seeds standing for its seed_<s>/<method> runs; and
    those runs grouped by method (empty when no such folder is given)."""
    runs: list[str] = []
    groups: dict[str, list[str]] = {}
    for d in dirs:
        result = Path(d) / "experiment.json"
        seeds = json.loads(result.read_text()).get("seeds") if result.is_file() else None
        if not seeds:
            runs.append(d)
            continue
        for name in json.loads(result.read_text())["methods"]:
            paths = [str(Path(d) / f"seed_{s}" / name) for s in seeds]
            groups[name] = groups.get(name, []) + paths
            runs += paths
    return runs, groups


def _band_plot(groups: dict[str, list[Run]], path: Path) -> Any:
    """Each method's mean eval ppl per round over its seeds, with the 95% confidence band (Student's t)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ticks: set[int] = set()
    for name, runs in groups.items():
        by_round: dict[int, list[float]] = {}
        for r in runs:
            for x in r.rounds:
                if "eval_ppl" in x:
                    by_round.setdefault(x["round"], []).append(x["eval_ppl"])
        rounds = sorted(by_round)
        ticks |= set(rounds)
        stats = [interval(by_round[k]) for k in rounds]
        mean = [s["mean"] for s in stats]
        half = [s["ci95"] or 0.0 for s in stats]
        line, = ax.plot(rounds, mean, marker="o", label=f"{name} ({len(runs)} seeds)")
        bands = list(zip(mean, half, strict=True))
        ax.fill_between(rounds, [m - h for m, h in bands], [m + h for m, h in bands], color=line.get_color(), alpha=0.2)
    ax.set(xlabel="round (-1: pretrained)", ylabel="held-out perplexity", xticks=sorted(ticks),
           title="Mean perplexity over seeds, 95% confidence band")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return fig


def report(dirs: list[str], out: str | Path) -> Path:
    """Write the figures and report.md for `dirs` into `out`; returns the path of report.md."""
    import matplotlib

    matplotlib.use("Agg")
    if not dirs:
        raise UserError("report: give at least one run directory")
    paths, groups = expand(dirs)
    runs = [load_run(d) for d in paths]
    for r, p in zip(runs, paths, strict=True):
        if any(p in g for g in groups.values()):
            r.name = f"{Path(p).name} {Path(p).parent.name}"  # "splitft seed_0"
    _unique_names(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _ppl_plot(runs, "virtual_time", "virtual time (s, simulated devices)", "Perplexity vs virtual time",
              out / "ppl_vs_virtual_time.png")
    _ppl_plot(runs, "wall_time", "wall time (s, this machine)", "Perplexity vs wall time", out / "ppl_vs_wall_time.png")
    _bytes_plot(runs, out / "bytes_per_round.png")
    _cuts_plot(runs, out / "cuts.png")
    figures = ["ppl_vs_virtual_time", "ppl_vs_wall_time", "bytes_per_round", "cuts"]
    if groups:
        by_path = dict(zip(paths, runs, strict=True))
        _band_plot({name: [by_path[p] for p in ps] for name, ps in groups.items()}, out / "ppl_mean_by_round.png")
        figures.insert(0, "ppl_mean_by_round")
    md = ["# SplitFT report", "", "Runs: " + ", ".join(f"`{d}`" for d in dirs), "", table(runs), ""]
    md += [f"![{name}]({name}.png)" for name in figures]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return out / "report.md"
