"""`splitft` command line: parse arguments, load the config, dispatch. No training logic lives here.

    splitft simulate --config configs/default.yaml [key=value ...]   run a federation in one process
    splitft simulate --resume RUN_DIR                                continue it from its latest checkpoint
    splitft validate --config configs/default.yaml [key=value ...]   check a config, print it resolved
    splitft plan --config ... [--json] [key=value ...]               each cut policy's cuts and predicted round time
    splitft partition --config ... [--png FILE] [key=value ...]      show how the data splits among clients
    splitft preview --config ... [--n N] [--json] [key=value ...]    the first samples as rendered, loss tokens marked
    splitft experiment --config configs/experiment.yaml [--methods a,b] [--target-ppl X] [--seeds 0,1,2]
                                                  splitft vs makespan vs sfl-fixed vs fedlora vs centralized, one table
    splitft server --config ... [key=value ...]                      serve a deployed federation over gRPC
    splitft server --resume RUN_DIR                                  continue it from its latest round checkpoint
    splitft client --config ... --client-id N --server HOST:PORT     one client process (token in $SPLITFT_TOKEN)
    splitft launch --config ... --clients N                          server + N clients on loopback
    splitft privacy --config ... [--cuts 1,2,4,8] [--ppl-cost] [--out FILE] [--json]
                                                  what a curious server recovers at each cut and defense
    splitft report RUN_DIR [RUN_DIR ...] [--out DIR]                  PNG plots + markdown table of runs
    splitft evaluate RUN_DIR [--adapter DIR] [--generate N] [--json]  held-out ppl (and ROUGE-L) of an adapter
    splitft generate RUN_DIR (--prompt TEXT | --chat | --file F) [--json]    answer prompts with the fine-tuned model
User mistakes print one line `splitft: error: ...` and exit with code 2. stdout carries only results for tools
(JSON, or the markdown table of experiment/report); progress, round lines and logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable

from .errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="splitft", description="Federated split LoRA fine-tuning (SplitFT).")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in [("simulate", "run a federation in one process (in-process transport)"),
                        ("validate", "check a config and print it fully resolved"),
                        ("plan", "each cut policy's cuts and predicted round time for the config (no training)"),
                        ("partition", "print per-client sample counts and length histograms (no model weights)"),
                        ("preview", "the first training samples as rendered, loss tokens marked (no model weights)"),
                        ("experiment", "run splitft, makespan, sfl-fixed, fedlora and centralized; print one table"),
                        ("server", "serve a deployed federation over gRPC"),
                        ("client", "run one client process against a gRPC server"),
                        ("launch", "run a server and N client processes on loopback"),
                        ("privacy", "what a curious server recovers (tokens, labels) at each cut and defense")]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", help="YAML config file (defaults apply to missing keys)")
        s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. split.cut=4 federation.rounds=2")
        if name == "plan":
            s.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
        if name == "preview":
            s.add_argument("--n", type=int, default=3, help="how many samples to show (default 3)")
            s.add_argument("--json", action="store_true", help="print one JSON object (token ids and labels too)")
        if name == "partition":
            s.add_argument("--png", help="also save a clients x buckets heat map to this PNG file")
            s.add_argument("--json", action="store_true", help="print the counts as JSON instead of a table")
        if name in ("simulate", "server"):
            s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its latest checkpoint")
        if name == "server":
            s.add_argument("--emulate", action="store_true",
                           help="pace each training step's compute to heterogeneity.server_tflops, for a one-machine "
                                "deployment that behaves like the configured federation")
        if name == "client":
            s.add_argument("--client-id", type=int, required=True, help="this client's id, 0 .. n_clients-1")
            s.add_argument("--server", default=None, help="host:port of the server (default: transport.address)")
            s.add_argument("--emulate", action="store_true",
                           help="pace this process to the device the config gives this client (heterogeneity), "
                                "for a one-machine deployment that behaves like the configured federation")
            s.add_argument("--dealt", action="store_true",
                           help="train on this client's share of data.path as the simulation partitions it (what "
                                "`launch` does without --client-data), not on all of data.path")
        if name == "launch":
            s.add_argument("--clients", type=int, required=True, help="number of client processes")
            s.add_argument("--emulate", action="store_true",
                           help="the server and every client pace themselves to their devices in the config (see "
                                "`server --emulate` and `client --emulate`)")
            s.add_argument("--client-data", default=None, metavar="A,B,...",
                           help="one data file per client (each trains on all of its own file); without it, "
                                "data.path is dealt with data.partitioner as in the simulation")
        if name == "privacy":
            s.add_argument("--cuts", default="1,2,4,8", help="cuts whose activations are inverted (default 1,2,4,8)")
            s.add_argument("--noise", default=None, metavar="0,0.5",
                           help="privacy.noise levels the inversions face (default: 0 and the configured one)")
            s.add_argument("--tails", default=None, metavar="1,4",
                           help="U-shaped tails whose grad_hidden is attacked (default: split.tail)")
            s.add_argument("--defenses", default=None, metavar="none,keep=0.25",
                           help="grad_hidden defenses, comma-separated: none or keep=K+clip=C+noise=N "
                                "(privacy.grad_keep/grad_clip/grad_noise; default: none and the configured one)")
            s.add_argument("--samples", type=int, default=8, help="held-out samples inverted (default 8)")
            s.add_argument("--steps", type=int, default=6, help="training steps whose grad_hidden is attacked")
            s.add_argument("--opt-steps", type=int, default=200, help="Adam steps of the optimized inversion")
            s.add_argument("--ppl-cost", action="store_true",
                           help="train each setting for the configured rounds and report its eval-ppl cost")
            s.add_argument("--out", default=None, metavar="FILE",
                           help="write the JSON table (what split.privacy_table reads)")
            s.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
        if name == "experiment":
            s.add_argument("--methods", default="splitft,makespan,sfl-fixed,fedlora,centralized",
                           help="comma-separated subset of splitft,makespan,sfl-fixed,fedlora,centralized")
            s.add_argument("--seeds", default=None, metavar="0,1,2",
                           help="run every method for each seed; the table gives means, 95%% intervals and "
                                "differences to sfl-fixed paired by seed")
            s.add_argument("--generate", type=int, default=0, metavar="N",
                           help="also score each run's greedy answers to N held-out prompts (ROUGE-L, exact match)")
            s.add_argument("--target-ppl", type=float, default=None,
                           help="ppl for 'virtual time to target' (default: the worst final ppl of the methods)")
    rep = sub.add_parser("report", help="plots (PNG) and a markdown table comparing finished runs")
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by simulate/experiment")
    rep.add_argument("--out", default="report", help="folder for the PNGs and report.md (default: report)")
    ev = sub.add_parser("evaluate", help="held-out loss/ppl/accuracy of a run's adapter, loaded with PEFT")
    ev.add_argument("run", metavar="RUN_DIR", help="a finished run directory (its config.yaml picks model and data)")
    ev.add_argument("--adapter", help="a PEFT adapter folder to evaluate instead of RUN_DIR/adapter")
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of a line for people")
    ev.add_argument("--generate", type=int, default=0, metavar="N",
                    help="also answer the first N held-out prompts greedily: ROUGE-L and exact match vs. references")
    ev.add_argument("--max-new-tokens", type=int, default=128, help="most tokens per answer (default 128)")
    gen = sub.add_parser("generate", help="answer prompts with a run's fine-tuned model (base + its PEFT adapter)")
    gen.add_argument("run", metavar="RUN_DIR", help="a finished run directory (simulated or a deployed server's)")
    ask = gen.add_mutually_exclusive_group(required=True)
    ask.add_argument("--prompt", help="one user message to answer")
    ask.add_argument("--chat", action="store_true", help="a conversation on the terminal (/reset, /exit)")
    ask.add_argument("--file", metavar="PROMPTS.jsonl",
                     help='one prompt per line: {"prompt": ...}, {"messages": [...]} or a JSON string')
    gen.add_argument("--system", help="a system message before the conversation")
    gen.add_argument("--max-new-tokens", type=int, default=128, help="most tokens per answer (default 128)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature > 0)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    gen.add_argument("--adapter", help="a PEFT adapter folder to use instead of RUN_DIR/adapter")
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt instead of streamed text")
    return p


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Pull `section.key=value` and `--section.key=value` items out before argparse sees them (it would reject
    unknown flags, and positionals after an option), so overrides may stand anywhere on the line."""
    known: list[str] = []
    overrides: list[str] = []
    for a in argv:
        key = a.split("=", 1)[0]
        is_override = "=" in a and "." in key and not key.startswith("-") or a.startswith("--") and "." in key
        (overrides if is_override else known).append(a)
    return known, overrides


def _simulate(args: argparse.Namespace, overrides: list[str]) -> int:
    from .build import load
    from .sim.runner import resume_simulation, run_simulation, sim_problems

    if args.resume and (args.config or overrides):
        raise UserError("--resume: the run continues with its own config.yaml; drop --config and overrides")
    summary = resume_simulation(args.resume) if args.resume else run_simulation(load(args.config, overrides,
                                                                                     sim_problems))
    print(json.dumps(summary))
    return 0


def _validate(args: argparse.Namespace, overrides: list[str]) -> int:
    import yaml

    from .build import check_model, compute_of, load, precision_line
    from .config import to_dict
    from .sim.runner import sim_problems

    cfg = load(args.config, overrides, sim_problems)
    check_model(cfg)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    print(f"on this machine: {precision_line(compute_of(cfg))}", file=sys.stderr)
    return 0


def _plan(args: argparse.Namespace, overrides: list[str]) -> int:
    from .build import load
    from .sim.plan import format_plan, plan
    from .sim.runner import sim_problems

    result = plan(load(args.config, overrides, sim_problems))
    print(json.dumps(result) if args.json else format_plan(result))
    return 0


def _partition(args: argparse.Namespace, overrides: list[str]) -> int:
    from .build import load
    from .data.describe import describe, format_table, save_heatmap

    info = describe(load(args.config, overrides))
    print(json.dumps(info) if args.json else format_table(info))
    if args.png:
        save_heatmap(info, args.png)
        print(f"heat map written to {args.png}", file=sys.stderr)
    return 0


def _preview(args: argparse.Namespace, overrides: list[str]) -> int:
    from .build import load
    from .data.preview import format_preview, preview

    if args.n < 0:
        raise UserError(f"--n: must be >= 0, got {args.n}")
    info = preview(load(args.config, overrides), args.n)
    print(json.dumps(info) if args.json else format_preview(info))
    return 0


def _experiment(args: argparse.Namespace, overrides: list[str]) -> int:
    from .build import load
    from .sim.experiment import parse_methods, parse_seeds, run_experiment
    from .sim.runner import sim_problems

    methods = parse_methods(args.methods)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    if args.generate < 0:
        raise UserError(f"--generate: must be >= 0, got {args.generate}")
    run_experiment(load(args.config, overrides, sim_problems), methods, args.target_ppl, seeds, args.generate)
    return 0


def _privacy(args: argparse.Namespace, overrides: list[str]) -> int:
    from .build import load
    from .sim.privacy import Defense, audit, format_audit, parse_list, write_table

    cfg = load(args.config, overrides)
    p = cfg.privacy
    cuts = parse_list(args.cuts, "--cuts", int)
    noises = parse_list(args.noise if args.noise is not None else f"0,{p.noise}" if p.noise else "0", "--noise", float)
    tails = parse_list(args.tails if args.tails is not None else str(cfg.split.tail), "--tails", int)
    configured = Defense(p.grad_clip, p.grad_noise, p.grad_keep)
    defenses = [Defense.parse(d) for d in args.defenses.split(",")] if args.defenses is not None else \
        [Defense(), *([configured] if configured != Defense() else [])]
    if len({d.name for d in defenses}) != len(defenses):
        raise UserError(f"--defenses: each defense once, got {args.defenses!r}")
    result = audit(cfg, cuts, noises, tails, defenses, samples=args.samples, steps=args.steps,
                   opt_steps=args.opt_steps, ppl_cost=args.ppl_cost)
    if args.out:
        write_table(result, args.out)
        print(f"privacy table written to {args.out}", file=sys.stderr)
    print(json.dumps(result) if args.json else format_audit(result))
    return 0


def _server(args: argparse.Namespace, overrides: list[str]) -> int:
    from .build import load
    from .deploy.serve import resume_server, serve

    if args.resume and (args.config or overrides):
        raise UserError("--resume: the run continues with its own config.yaml; drop --config and overrides")
    print(json.dumps(resume_server(args.resume, args.emulate) if args.resume
                     else serve(load(args.config, overrides), emulate=args.emulate)))
    return 0


def _client(args: argparse.Namespace, overrides: list[str]) -> int:
    from .build import load
    from .deploy.join import join

    cfg = load(args.config, overrides)
    report = join(cfg, args.client_id, args.server or cfg.transport.address, dealt=args.dealt,
                  emulate=args.emulate)
    print(json.dumps({k: v for k, v in report.items() if k != "losses"}))
    return 0


def _launch(args: argparse.Namespace, overrides: list[str]) -> int:
    from .build import load
    from .deploy.launch import launch

    files = [f for f in args.client_data.split(",") if f] if args.client_data is not None else None
    launch(load(args.config, overrides), args.clients, files, emulate=args.emulate)
    return 0


def _report(args: argparse.Namespace, overrides: list[str]) -> int:
    from .report import report

    if overrides:
        raise UserError(f"report takes run directories, not config overrides: {' '.join(overrides)}")
    path = report(args.runs, args.out)
    print(path.read_text())
    print(f"report written to {path.parent}", file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace, overrides: list[str]) -> int:
    from .evaluate import evaluate_run

    if overrides:
        raise UserError(f"evaluate takes a run directory (its own config.yaml), not overrides: {' '.join(overrides)}")
    if args.generate < 0 or args.max_new_tokens < 1:
        raise UserError(f"--generate must be >= 0 and --max-new-tokens >= 1, got {args.generate} and "
                        f"{args.max_new_tokens}")
    result = evaluate_run(args.run, args.adapter, args.generate, args.max_new_tokens)
    if args.json:
        print(json.dumps(result))
        return 0
    answers = f"; rouge_l={result['rouge_l']:.3f} exact_match={result['exact_match']:.3f} over " \
        f"{result['generated']} greedy answers" if args.generate else ""
    print(f"{result['adapter']}: eval_loss={result['eval_loss']:.4f} eval_ppl={result['eval_ppl']:.2f} "
          f"eval_acc={result['eval_acc']:.3f} ({result['eval_tokens']} held-out tokens){answers}")
    return 0


def _generate(args: argparse.Namespace, overrides: list[str]) -> int:
    from .data.formats import Turn
    from .generate import Generator, Sampling, chat, read_prompts

    if overrides:
        raise UserError(f"generate takes a run directory (its own config.yaml), not overrides: {' '.join(overrides)}")
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    sampling.check()
    if args.chat and args.json:
        raise UserError("--json: one object per prompt is for --prompt and --file; --chat streams text")
    prompts = list(read_prompts(args.file)) if args.file else [(0, [Turn("user", args.prompt)])] if args.prompt \
        is not None else []  # a bad prompts file fails before the model loads
    gen = Generator(args.run, args.adapter)
    print(f"{gen.adapter} on {gen.cfg.model.source}, {'greedy' if args.temperature == 0 else 'sampling'}",
          file=sys.stderr)
    system = [Turn("system", args.system)] if args.system else []
    if args.chat:
        chat(gen, sampling, args.system, sys.stdin, sys.stdout, sys.stderr)
        return 0
    for line, turns in prompts:
        if args.json:
            out = gen.generate(system + turns, sampling)
            print(json.dumps({**({"line": line} if args.file else {}), "prompt": turns[-1].content, **out}),
                  flush=True)
        else:
            gen.generate(system + turns, sampling, stream=sys.stdout)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, list[str]], int]] = {
    "simulate": _simulate, "validate": _validate, "plan": _plan, "partition": _partition, "preview": _preview,
    "experiment": _experiment, "privacy": _privacy, "server": _server, "client": _client, "launch": _launch,
    "report": _report, "evaluate": _evaluate, "generate": _generate}


def _quiet_libraries() -> None:
    """Hide library deprecation chatter that says nothing to a SplitFT user."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Could not find a config file")


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    known, dashed = _split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = _parser().parse_args(known)
    try:
        return COMMANDS[args.command](args, list(getattr(args, "overrides", [])) + dashed)
    except UserError as e:
        print(f"splitft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("splitft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
