"""`splitft server`: the server of a deployed federation, one process, gRPC.

    splitft server --config cfg.yaml transport.address=0.0.0.0:50051 \\
        server.tokens_file=tokens.txt server.tls_cert=server.pem server.tls_key=server.key
Reads no data. Holds only its blocks (split: blocks [first, L), the final norm and the head, where first is
split.cut under `fixed` and split.cut_min otherwise; fedlora: no weights at all, it only aggregates). Decides
each round's cut per client with split.policy from what the clients measure (`placement.py`), serves every
client's steps in the simulation's order, drops clients that go silent (server.dead_after_s) or miss the
round deadline (server.round_timeout_s), aggregates each round over the clients that pushed, and when every
client is done or gone writes <out_dir>/adapter (PEFT), metrics.jsonl (round, eval and cut_decision records as a
simulation writes them), summary.json (the simulation's format, so `splitft report` reads it) and server.json.
It checkpoints at round boundaries (checkpoints/round_<r>); `splitft server --resume RUN_DIR` goes on from the
latest, and the clients, which keep reconnecting, run the interrupted round again from their own state.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint, lora
from ..build import check, check_model, open_model, optimizer_settings, precision_line, split_server
from ..config import Config, tail_cut
from ..cuts import cost_model_of, cut_bounds, cut_policy, round_costs, smallest_cut
from ..errors import UserError
from ..measure import peak_memory
from ..metrics import MetricsLogger, perplexity
from ..model.families import config_of, hf_of
from ..model.partial import PartialModel
from ..optim import LrSchedule
from ..rundir import RunLock, export_adapter, open_records, prepare_run_dir, run_config, truncate_lines, write_json
from ..schedule import Schedule
from ..server import FedAvgServer
from ..track import open_tracker
from ..transport import tls, wire
from ..transport.base import ByteCounter, sum_kinds, training_traffic
from ..transport.compress import AUTO, codecs_of
from ..transport.endpoint import Endpoint
from ..transport.grpc_server import check_listen, serve_grpc
from .coordinator import Coordinator
from .emulate import server_pacer
from .handshake import terms_of
from .placement import Placement


def read_tokens(path: str, n_clients: int) -> dict[int, str]:
    if not path:
        raise UserError("server.tokens_file: the server needs one token per client (line i = client i); "
                        "make one with: python -c \"import secrets; print(secrets.token_hex(16))\" per line")
    try:
        lines = [line.strip() for line in Path(path).read_bytes()[:1 << 20].decode("ascii").splitlines()
                 if line.strip()]
    except OSError as e:
        raise UserError(f"server.tokens_file: cannot read '{path}': {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"server.tokens_file: '{path}' is not a text file of tokens (non-ASCII bytes); make "
                        "one token per line, e.g. with secrets.token_hex(16)") from None
    if any(not t.isprintable() or " " in t for t in lines):
        raise UserError(f"server.tokens_file: '{path}' holds a token with spaces or control characters")
    if len(lines) < n_clients or any(len(t) < 16 for t in lines):
        raise UserError(f"server.tokens_file: needs {n_clients} tokens of at least 16 characters, "
                        f"one per line; '{path}' has {len(lines)}")
    return dict(enumerate(lines[:n_clients]))


async def _serve(coord: Coordinator, endpoint: Endpoint, tokens: dict[int, str], cfg: Config, log) -> None:
    watchdog = asyncio.create_task(coord.watch())
    try:
        await serve_grpc(endpoint, cfg.transport.address, tokens, cfg.transport, cfg.server, coord.finished, log)
    finally:
        watchdog.cancel()


def deploy_problems(cfg: Config) -> list[str]:
    """What a deployment cannot run, and why."""
    f = cfg.federation
    if f.method == "centralized":
        return ["federation.method=centralized is a simulation-only reference (one trainer holding everyone's "
                "data, which a federation exists not to have); run it with `splitft simulate`"]
    if f.dropout > 0:
        return ["federation.dropout simulates clients vanishing; in a deployment they vanish for real (set it to 0)"]
    if f.method == "fedlora" and f.round_budget == "time":
        return ["federation.round_budget=time is deployed for split learning only (a fedlora server sees no steps "
                "to time); use federation.round_budget=steps"]
    if cfg.codec.up == AUTO:
        return ["codec.up=auto chooses each client's codec in simulation; a deployment uses one codec for "
                "every client: set codec.up to the one a simulation chose (its cut_decision records)"]
    return []


def serve(cfg: Config, resume: bool = False, emulate: bool = False) -> dict:
    """Run the server until every client is done or gone; returns what it writes to server.json. With `resume`,
    `cfg` is the run's own config.yaml (its out_dir the directory given) and the run goes on from the latest
    checkpoint: metrics.jsonl is cut back to what it held then, and the clients, which keep reconnecting,
    run the interrupted round again. `emulate`: each training step's compute is paced to
    heterogeneity.server_tflops (`deploy/emulate.py`). The run directory is this process's while it serves
    (`RunLock`)."""
    with RunLock(Path(cfg.metrics.out_dir)) as lock:
        return _run_server(cfg, resume, emulate, lock)


def _run_server(cfg: Config, resume: bool, emulate: bool, lock: RunLock) -> dict:
    check(cfg, deploy_problems)
    tokens = read_tokens(cfg.server.tokens_file, cfg.federation.n_clients)
    tls.check_files(cfg.server)
    check_listen(cfg.transport.address)  # these before any file is written: a corrected command must not be
    meta = check_model(cfg)  # refused because a failed one left a run directory behind
    out = Path(cfg.metrics.out_dir)
    if resume:
        lock.take()
    saved = _resumable(out, cfg) if resume else None
    run_id: str | None  # a resumed run keeps its id (None: a checkpoint from before run ids)
    if saved is None:
        prepare_run_dir(cfg)
        lock.take()
        logger, run_id = open_records(cfg, "server")
    else:  # nothing touches the run's files until the checkpoint has been checked and loaded
        logger, run_id = MetricsLogger(out / "metrics.jsonl", offset=saved["wall_time"], hold=True), saved.get("run")
    logger.tracker = open_tracker(cfg)  # metrics.report_to: the federation's round records, from the server

    def log(text: str) -> None:
        print(f"[server] {text}", file=sys.stderr, flush=True)
        logger.log("server", message=text)

    party = _Party(cfg, meta, logger, log, emulate, run_id)
    if saved is not None:
        checkpoint.restore(out, saved, party.state_dict, party.load_state_dict)
        truncate_lines(out / "metrics.jsonl", saved["metrics_lines"])
        logger.release()
        log(f"resumed {out} from its checkpoint: the federation stands at round {party.coord.round}")
    coord, fed = party.coord, cfg.federation
    endpoint = Endpoint(coord, _step_shape(cfg, party.pm, party.first), *_adapter_limits(party.pm),
                        party.records.counter)
    asyncio.run(_serve(coord, endpoint, tokens, cfg, log))
    records = party.records
    records.eval(fed.rounds - 1, coord.evals.get(fed.rounds - 1, {}))  # the final model, reported with `done`
    export_adapter(party.pm.peft, party.server.global_model(party.placement.cut_of(0)), out / "adapter")
    memory = peak_memory()
    log(f"peak memory: {memory}")
    emulation = {}
    if party.pacer is not None:
        party.pacer.warn_if_behind()
        emulation = {"emulation": party.pacer.summary()}
    summary = records.summary(cfg, coord, memory)
    write_json(out / "summary.json", summary)
    write_json(out / "server.json", {"rounds": coord.round, "clients": fed.n_clients,
                                     "wall_time_s": summary["wall_time_s"], **memory,
                                     "precision": party.pm.compute.precision.record(),
                                     "dropped_by_round": [r["dropped"] for r in records.rounds],
                                     "steps_by_round": [r["steps_by_client"] for r in records.rounds],
                                     "server_steps_by_round": [r["server_steps"] for r in records.rounds],
                                     "failed_requests": dict(endpoint.failures), **emulation})
    logger.close()
    if not any(r["clients"] for r in records.rounds):
        raise UserError(f"the run ended untrained: no client's update was aggregated in any of its {fed.rounds} "
                        f"rounds ({_who_came(coord, fed.n_clients)}); its records are in {out}; see the server's "
                        "log for why, then start the clients with the server's config and their tokens")
    return summary


def _who_came(coord: Coordinator, n_clients: int) -> str:
    """Which clients connected and which were let in, for the line saying that nobody trained."""
    came, greeted = sorted(coord.alive.last_seen), sorted(coord.processes)
    if not came:
        return f"none of the {n_clients} clients connected"
    return f"clients {came} connected, {greeted or 'none'} of them passed the handshake"


def resume_server(run_dir: str | Path, emulate: bool = False) -> dict:
    """`splitft server --resume RUN_DIR`: the run in RUN_DIR, with its own config.yaml, written only there."""
    cfg = run_config(run_dir)
    return serve(cfg, resume=True, emulate=emulate)


def _resumable(out: Path, cfg: Config) -> dict[str, Any]:
    if (out / "summary.json").exists():
        raise UserError(f"--resume: '{out}' already finished (summary.json exists); nothing to resume")
    saved = checkpoint.load(out)
    checkpoint.check_position(out, saved, cfg.federation.rounds - 1, first_record=0)
    checkpoint.check_identity(out, saved)
    return saved


class _Party:
    """The server's objects, built from the config (fresh or to load a checkpoint into): its part of the model,
    the `SplitServer` (fedlora: a `FedAvgServer`), the placement, the records and the coordinator."""

    def __init__(self, cfg: Config, meta: Any, logger: MetricsLogger, log: Callable[[str], Any],
                 emulate: bool = False, run_id: str | None = None):
        fed, split = cfg.federation, cfg.federation.method == "split"
        self.cfg, self.logger, self.pm = cfg, logger, open_model(cfg, meta)
        pm = self.pm
        cost = cost_model_of(hf_of(pm.peft), pm.family, pm.compute)
        bounds = cut_bounds(cfg, cost, pm.n_layer)
        smallest = smallest_cut(cfg, bounds)  # the least a client may hold, the server's first block
        self.first = smallest if split else pm.n_layer
        end = tail_cut(cfg, pm.n_layer)
        if split:  # blocks [first, L), norm, head (under U: [first, tail_cut)); nothing of the clients' blocks
            pm.hold(pm.server_paths(self.first, end))
            self.server: FedAvgServer = split_server(cfg, pm.peft, pm.family, self.first, pm.compute)
        else:  # fedlora: the server only aggregates and holds no weights at all
            self.server = FedAvgServer(lora.adapter_state_dict(pm.peft), pm.family)
        if not split:
            what = "none: clients train the whole model"
        elif end is None:
            what = f"blocks {self.first}-{pm.n_layer - 1} and the head"
        else:
            what = f"blocks {self.first}-{end - 1}; the clients hold the tail and the head"
        log(f"holding {pm.held_gb():.3f} GB of base weights ({what}); {precision_line(pm.compute)}")
        tokens_per_step = cfg.train.batch_size * cfg.data.max_length
        costs = round_costs(cfg, pm.peft, pm.family, pm.compute, pm.n_layer) \
            if split and cfg.split.policy == "makespan" else None
        self.placement = Placement(cut_policy(cfg, bounds, costs) if split else None, bounds,
                                   cost.train_flops(0, 1, cfg.train.batch_size, cfg.data.max_length) / tokens_per_step,
                                   smallest_cut=smallest, allow_over_memory=cfg.split.allow_over_memory,
                                   log_decision=lambda **record: logger.log("cut_decision", **record))
        self.records = Records(logger, log, optimizer_settings(cfg)["schedule"])
        self.pacer = server_pacer(cfg.heterogeneity.server_tflops, cost, log, cfg.heterogeneity.server_step_s,
                                  end) if emulate and split else None
        pace = None if self.pacer is None else self.pacer.rest
        self.coord = Coordinator(self.server, fed.n_clients, fed.rounds, fed.local_steps if split else 0,
                                 fed.clients_per_round, fed.seed, log, run_id=run_id,
                                 dead_after_s=cfg.server.dead_after_s, round_timeout_s=cfg.server.round_timeout_s,
                                 on_round=self.records.round,
                                 placement=self.placement,
                                 on_eval=lambda r: self.records.eval(r, self.coord.evals.get(r, {})),
                                 max_cut=bounds.hi if split else pm.n_layer,
                                 samples_cap=fed.local_steps * cfg.train.batch_size,
                                 terms=terms_of(cfg, pm.fingerprint, pm.compute.precision), on_boundary=self.checkpoint,
                                 schedule=Schedule.of(fed), pace=pace,
                                 on_served=lambda reqs, seconds: self.placement.note_server(sum(
                                     cost.train_flops(cut, pm.n_layer, b, t, head=True)
                                     for cut, b, t in (r.priced for r in reqs)), seconds))

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed server needs, at a round boundary. Client-made values (reports, evaluations) go
        as JSON text: their keys are the clients' to choose."""
        return {"round": self.coord.round - 1, "run": self.coord.run_id, "server": self.server.state_dict(),
                "metrics_lines": self.logger.lines,
                "wall_time": self.logger.elapsed(),
                "json": json.dumps({"coordinator": self.coord.state_dict(), "placement": self.placement.state_dict(),
                                    "records": self.records.state_dict()})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rest = json.loads(state["json"])
        self.server.load_state_dict(state["server"])
        self.coord.load_state_dict(rest["coordinator"])
        self.placement.load_state_dict(rest["placement"])
        self.records.load_state_dict(rest["records"])

    def checkpoint(self) -> None:
        """After round r is aggregated: checkpoints/round_<r>, every metrics.checkpoint_every rounds and after the
        last (the clients' final evaluations still come after it)."""
        done, every = self.coord.round - 1, self.cfg.metrics.checkpoint_every
        if every and ((done + 1) % every == 0 or done == self.cfg.federation.rounds - 1):
            checkpoint.save(Path(self.cfg.metrics.out_dir), done, self.state_dict())


def _step_shape(cfg: Config, pm: PartialModel, first: int) -> wire.StepShape:
    hf = hf_of(pm.peft)
    end = tail_cut(cfg, pm.n_layer)
    up, down = codecs_of(cfg.codec)
    c = config_of(hf)
    return wire.StepShape(c.hidden_size, pm.dtype, max_tokens=cfg.train.batch_size * cfg.data.max_length,
                          vocab=c.vocab_size, cut_range=(first, end or pm.n_layer),
                          codec_up=up, codec_down=down, u=end is not None)


def _adapter_limits(pm: PartialModel) -> tuple[dict[str, torch.Size], int]:
    """The global shape of every adapter tensor, and the largest numel a pushed tensor may have."""
    full = lora.adapter_state_dict(pm.peft)
    return {n: t.shape for n, t in full.items()}, max(t.numel() for t in full.values())


class Records:
    """The server's metrics.jsonl records and summary.json, in the simulation's format: `round` records at each
    aggregation (clients, cuts, dropped, bytes), `eval` records once the clients' evaluations of a round's
    global model are in (token-weighted over the clients' own held-out data), the summary at the end."""

    def __init__(self, logger: MetricsLogger, log: Callable[[str], Any], schedule: LrSchedule):
        self.logger, self.log, self.schedule = logger, log, schedule
        self.counter = ByteCounter()
        self.last = self.counter.snapshot()  # the counts when the previous round ended
        self.rounds: list[dict[str, Any]] = []
        self.evals: dict[int, dict[str, Any]] = {}

    def round(self, record: dict[str, Any]) -> None:
        this_round = sum_kinds(self.counter.since(self.last))
        self.last = self.counter.snapshot()
        self.rounds.append(self.logger.log("round", **record, lr=self.schedule.round_lr(record["round"]),
                                           bytes=self.counter.totals(),
                                           **training_traffic(this_round)))

    def eval(self, round_: int, by_client: dict[int, tuple[float, int, int, int]]) -> None:
        if not by_client or round_ in self.evals:
            return
        loss_sum, n_tok, n_ok = (sum(v[i] for v in by_client.values()) for i in range(3))
        loss = loss_sum / max(n_tok, 1)
        rec = self.logger.log("eval", round=round_, eval_loss=loss, eval_ppl=perplexity(loss),
                              eval_acc=n_ok / max(n_tok, 1), eval_tokens=int(n_tok),
                              eval_cuts={str(c): v[3] for c, v in sorted(by_client.items())},
                              eval_ppl_by_client={str(c): perplexity(v[0] / max(v[1], 1))
                                                  for c, v in sorted(by_client.items())})
        self.evals[round_] = rec
        self.log(f"{'pretrained model' if round_ < 0 else f'after round {round_}'}: eval_ppl={rec['eval_ppl']:.2f} "
                 f"over {len(by_client)} clients' held-out data")

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "evals": {str(r): e for r, e in self.evals.items()},
                "counter": self.counter.state_dict(), "last": {str(c): k for c, k in self.last.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds = list(state["rounds"])
        self.evals = {int(r): e for r, e in state["evals"].items()}
        self.counter.load_state_dict(state["counter"])
        self.last = {int(c): dict(k) for c, k in state["last"].items()}

    def summary(self, cfg: Config, coord: Coordinator, memory: dict[str, float]) -> dict[str, Any]:
        evals = [self.evals[r] for r in sorted(self.evals)]
        first, last = (evals[0], evals[-1]) if evals else ({}, {})
        return {"method": cfg.federation.method,
                "policy": cfg.split.policy if cfg.federation.method == "split" else None, "deployed": True,
                "initial_eval_ppl": first.get("eval_ppl"), "final_eval_ppl": last.get("eval_ppl"),
                "final_eval_acc": last.get("eval_acc"), "rounds": len(self.rounds),
                "eval_ppl_by_round": {str(e["round"]): e["eval_ppl"] for e in evals},
                "virtual_time_by_round": {},
                "wall_time_by_round": {str(r["round"]): r["wall_time"] for r in self.rounds},
                "cuts_by_round": {str(r["round"]): r["cuts"] for r in self.rounds},
                "bytes": self.counter.totals(), "bytes_up": sum(r["bytes_up"] for r in self.rounds),
                "bytes_down": sum(r["bytes_down"] for r in self.rounds), "virtual_time_s": None,
                "wall_time_s": round(self.logger.elapsed(), 2), "server": memory,
                "dropped_by_round": {str(r["round"]): r["dropped"] for r in self.rounds if r["dropped"]},
                "clients": {str(c): {"final_cut": coord.placement.cut_of(c) if coord.placement else None}
                            for c in range(cfg.federation.n_clients)}}

