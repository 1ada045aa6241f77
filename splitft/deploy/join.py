"""`splitft client`: one client of a deployed federation, its own process, gRPC to the server.

    SPLITFT_TOKEN=... splitft client --config cfg.yaml --client-id 2 --server host:50051 data.path=mine.jsonl
A client is a real party: it trains on its own `data.path` (all of it but a held-out slice, data.eval_fraction,
on which it evaluates each global model it pulls), and holds only what it runs: the embeddings and blocks
[0, cut) of the model file (read tensor by tensor), or the whole model under fedlora. Each round it pulls its cut
and the global adapters (loading or dropping blocks when the server's policy moved its cut), trains
`federation.local_steps` split steps, and pushes its adapters with a report of what it measured (compute,
link, memory: `measure.py`) and its evaluation. `--dealt` (what `splitft launch` does when it is given one data
file for everyone) takes instead this client's share of the file as the simulation partitions it, and the
simulation's held-out slice, so a one-machine deployment reproduces `splitft simulate`.
Writes <out_dir>/client_<id>.json.
"""

from __future__ import annotations

import copy
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import checkpoint
from ..build import (
    Setup,
    check,
    check_data,
    check_model,
    client_stream,
    cut_rank,
    load_data,
    open_model,
    optimizer_settings,
    precision_line,
    split_client_with,
)
from ..client import LocalClient, SplitClient
from ..config import Config, tail_cut
from ..cuts import cost_model_of
from ..data.datasets import DataStats, Example, Rows, data_line, load_examples, split_eval
from ..data.files import resolve_path
from ..data.partitioners import partitioner_for, samples_of
from ..errors import UserError
from ..measure import Meter, check_profile, client_report, peak_memory
from ..metrics import perplexity, quantiles
from ..model.families import hf_of
from ..model.partial import PartialModel, TokenIds
from ..model.split import ClientPart, FullPart
from ..rundir import write_json
from ..schedule import another_step, plan_round
from ..seeding import derive_seed
from ..transport import tls
from ..transport.base import adapters_nbytes
from ..transport.grpc_client import GrpcTransport, ServerRefused, ServerRestarted
from .emulate import PacedTransport, Pacer, emulated_device
from .handshake import terms_of
from .serve import deploy_problems


def client_data(cfg: Config, client_id: int, tokenizer: Any, dealt: bool,
                rows: Rows | None = None) -> tuple[list[Example], list[Example], DataStats]:
    """(training examples, held-out examples, what became of the file's rows) of this client: its own file, or
    (`dealt`) its partition of the federation's shared file and the simulation's held-out slice. `rows`: the
    file already parsed (`check_data`)."""
    if dealt:
        train, held_out, stats = load_data(cfg, tokenizer, rows)
        parts = partitioner_for(cfg.data, cfg.federation.n_clients, cfg.federation.seed).partition(samples_of(train))
        return [train[i] for i in parts[client_id]], held_out, stats
    examples, stats = load_examples(cfg.data, tokenizer, derive_seed(cfg.federation.seed, "data", client_id),
                                    rows=rows)
    return *split_eval(examples, cfg.data.eval_fraction, cfg.data.max_eval_samples), stats


class FellBehind(Exception):
    """The federation went on without this client (its process was stopped, a laptop asleep, past
    server.dead_after_s): `welcome` says the round it rejoins at."""

    def __init__(self, welcome: dict[str, Any]):
        super().__init__(f"the federation is at round {welcome['round']}")
        self.welcome = welcome


class Holder:
    """This client's part of the model, and the mechanism that changes it: loads the blocks a larger cut needs
    from the model file, drops those a smaller cut leaves (the policy decides; this applies)."""

    def __init__(self, pm: PartialModel, r_cut: int | None, tail_cut: int | None = None):
        self.pm, self.r_cut, self.tail_cut, self.cut = pm, r_cut, tail_cut, 0

    def part(self, cut: int) -> ClientPart | FullPart:
        pm = self.pm
        if cut > self.cut:
            pm.hold(pm.client_paths(cut, self.tail_cut))
        part = FullPart(pm.peft, pm.family, pm.compute) if cut >= pm.n_layer else \
            ClientPart(pm.peft, pm.family, cut, self.r_cut, self.tail_cut, pm.compute)
        if 0 < cut < self.cut:
            pm.drop(pm.blocks(range(cut, self.cut)))
        self.cut = cut
        return part


def join(cfg: Config, client_id: int, address: str, dealt: bool = False, emulate: bool = False) -> dict:
    check(cfg, deploy_problems)
    check_profile(cfg)
    fed = cfg.federation
    if not 0 <= client_id < fed.n_clients:
        raise UserError(f"--client-id: must be in [0, {fed.n_clients - 1}], got {client_id}")
    token = os.environ.get(cfg.client.token_env, "")
    if not token:
        raise UserError(f"set this client's token in the environment variable {cfg.client.token_env}")
    rows = check_data(cfg)  # a missing, unreadable or all-bad data file fails here, before any weight is read
    device = emulated_device(cfg, client_id) if emulate else None
    tls.check_files(cfg.client)
    meta = check_model(cfg)
    pm = open_model(cfg, meta)
    train, held_out, stats = client_data(cfg, client_id, pm.tokenizer, dealt, rows)
    token_ids = pm.drop_tokenizer()  # tokenized: from here on only the pad id is needed
    say = lambda text: print(f"[client {client_id}] {text}", file=sys.stderr, flush=True)  # noqa: E731
    say(data_line(stats, len(train), len(held_out), cfg.data, "data (dealt)" if dealt else "data"))
    say(precision_line(pm.compute))
    transport = GrpcTransport(address, client_id, token, cfg.transport, cfg.client, cfg.codec, log=say)
    try:
        welcome = transport.hello({**terms_of(cfg, pm.fingerprint, pm.compute.precision),
                                   "process": secrets.token_hex(8)})
    except ServerRefused as e:
        transport.close()
        raise UserError(str(e)) from None
    me = Participant(cfg, client_id, pm, token_ids, train, held_out, stats, transport, say)
    if device is not None:
        me.pacer = Pacer(device, cost_model_of(hf_of(pm.peft), pm.family, pm.compute), say)
        say(f"emulating a {device.name}: {device.tflops:g} TFLOP/s, {device.up_mbps:g}/{device.down_mbps:g} Mbit/s, "
            f"{device.latency_ms:g} ms")
    me.run(welcome)
    if me.pacer is not None:
        me.pacer.warn_if_behind()
    transport.close()
    memory = peak_memory()
    out = me.results(dealt, memory)
    cuda = f", peak CUDA {memory['peak_cuda_gb']:.3f} GB" if "peak_cuda_gb" in memory else ""
    say(f"final eval_ppl={out['eval_ppl']:.2f} on its held-out data; peak RSS {memory['peak_rss_gb']:.3f} GB{cuda}, "
        f"holding {out['held_gb']:.3f} GB of base weights")
    Path(cfg.metrics.out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(cfg.metrics.out_dir) / f"client_{client_id}.json", out)
    return out


class Participant:
    """One deployed client's run: each round it is selected for, pull its cut and the global adapters, evaluate
    them (the model after the previous round), train `local_steps` steps, push with its report; at the end,
    evaluate the final model and say it is done.

    It keeps its state as of the start of its last two rounds (LoRA, AdamW, data position: `client.state_dict`)
    and writes the latest to <out_dir>/client_<id>/checkpoints (every metrics.checkpoint_every rounds). When the
    server restarts from its checkpoint (`splitft server --resume`) this client goes back to its state at the
    start of the round the server stands at and runs it again, so the run ends as an uninterrupted one would;
    a restarted client process takes its optimizer state and data position from its own checkpoint.
    """

    def __init__(self, cfg: Config, client_id: int, pm: PartialModel, token_ids: TokenIds, train: list[Example],
                 held_out: list[Example], stats: DataStats, transport: GrpcTransport, say: Callable[[str], None]):
        self.cfg, self.id, self.pm, self.transport, self.say = cfg, client_id, pm, transport, say
        fed = cfg.federation
        self.holder = Holder(pm, cut_rank(cfg), tail_cut(cfg, pm.n_layer))
        self.setup = Setup(cfg, pm.peft, pm.family, token_ids, train, held_out, stats, pm.device, [], pm.compute)
        stream = client_stream(self.setup, client_id, list(range(len(train))))
        first_cut = cfg.split.cut if fed.method == "split" else pm.n_layer
        part = self.holder.part(first_cut)
        if isinstance(part, ClientPart):  # federation.method=split
            self.client: SplitClient | LocalClient = split_client_with(cfg, client_id, part, stream)
        else:
            self.client = LocalClient(client_id, part, stream, **optimizer_settings(cfg))
        self.meter = Meter(cfg.measure.ewma)
        self.losses: dict[int, list[float]] = {}
        self.step_walls: list[float] = []  # wall seconds of each training step, from its forward to its update
        self.dropped: set[int] = set()
        self.cuts: dict[str, int] = {}
        self.snapshots: dict[int, dict[str, Any]] = {}
        self.final: dict[str, Any] = {}
        self.folder = Path(cfg.metrics.out_dir) / f"client_{client_id}"
        self.pacer: Pacer | None = None  # --emulate: paces this process to its device profile

    def report(self) -> dict[str, Any]:
        return client_report(self.cfg, self.meter, self.pm.held_gb(), self.pm.device)

    def selected(self, r: int) -> bool:
        fed = self.cfg.federation
        return self.id in plan_round(r, list(range(fed.n_clients)), fed.clients_per_round, 1, fed.seed).clients

    def run(self, welcome: dict[str, Any]) -> None:
        """Rounds from the one the server says this client starts at, then the final evaluation; across server
        restarts."""
        run_id, r = welcome["run"], self._rejoin(welcome)
        rounds = self.cfg.federation.rounds
        while True:
            try:
                while r < rounds:
                    if self.selected(r):
                        self._keep(r, run_id)
                        self._round(r)
                    r += 1
                self._finish()
                return
            except ServerRestarted as e:
                r = self._after_restart(e.welcome, run_id, r)
            except FellBehind as e:
                r = e.welcome["start"]
                self.say(f"this client fell behind (asleep or cut off while the federation went on): the federation "
                         f"is at round {e.welcome['round']}; rejoining at round {r} from its current state")

    def _rejoin(self, welcome: dict[str, Any]) -> int:
        """The round to start at; a client joining late takes its own checkpoint's optimizer state if it has one
        of this run (the global adapters come with the next pull either way)."""
        start = welcome["start"]
        saved = own_checkpoint(self.folder, welcome, self.say)
        if saved is not None and saved["round"] <= start:
            checkpoint.restore(self.folder, saved["client"], self.client.state_dict, self._restore)
            self.say(f"rejoining at round {start} with its optimizer state and data position from its checkpoint "
                     f"of round {saved['round']}")
        elif start > 0:
            self.say(f"rejoining at round {start} (the federation is at round {welcome['round']}) with a fresh "
                     "optimizer: no checkpoint of this run")
        return start

    def _keep(self, r: int, run_id: str) -> None:
        """This client's state at the start of round r: in memory for a server restart, on disk for its own."""
        self.snapshots = {k: v for k, v in self.snapshots.items() if k >= r - 1}
        self.snapshots[r] = copy.deepcopy(self.client.state_dict())
        every = self.cfg.metrics.checkpoint_every
        if every and r % every == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            checkpoint.save(self.folder, r, {"round": r, "run": run_id, "client": self.snapshots[r]})

    def _restore(self, state: dict[str, Any]) -> None:
        self.client.replace_part(self.holder.part(state["cut"]))
        self.client.load_state_dict(copy.deepcopy(state))

    def _after_restart(self, welcome: dict[str, Any], run_id: str, r: int) -> int:
        """Where to go on when the server came back as another process."""
        back = welcome["round"]
        if welcome["run"] != run_id:
            raise UserError(f"the server now serves another run (it was restarted without --resume) at round {back}; "
                            f"this client was at round {r}: restart the server with `splitft server --resume "
                            f"<its run directory>`")
        if back in self.snapshots:
            self._restore(self.snapshots[back])
            self.say(f"the server restarted from its checkpoint at round {back}; running round {back} again from "
                     "this client's state at its start")
        elif back < self.cfg.federation.rounds:
            self.say(f"the server restarted at round {back}; this client kept no state of that round and goes on "
                     "from its current state")
        return back

    def _round(self, r: int) -> None:
        client, transport, pacer = self.client, self.transport, self.pacer
        before = transport.counter.snapshot([self.id])
        try:
            cut = client.pull(transport, r, self.report(), recut=self.holder.part)
        except ServerRefused:
            welcome = transport.where()  # refused for a round that is over: go where the federation stands
            if welcome["round"] > r:
                raise FellBehind(welcome) from None
            raise
        if pacer is not None:  # the adapters' download at the emulated link
            pacer.sleep(pacer.transfer(transport.counter.since(before)[self.id]["lora_down"], "down"))
        self.cuts[str(r)] = cut
        every = self.cfg.metrics.eval_every
        pending = _evaluate(client, transport, self.cfg, self.setup, r - 1) if r == 0 or r % every == 0 else None
        try:
            losses: list[float] = []
            start, own_s = time.monotonic(), 0.0
            while self._more(len(losses), time.monotonic() - start):
                before, began = transport.counter.snapshot([self.id]), time.perf_counter()
                reply = self._step(r, len(losses))
                self.step_walls.append(time.perf_counter() - began)  # its wait for the server included
                moved = sum(transport.counter.since(before)[self.id].values())
                losses.append(reply.loss)
                t = client.timing
                assert t is not None, "set by every training step"
                own_s += t.compute_s + t.link_s  # its own work, not the wait for other clients' turns
                self.meter.step(t.compute_s, client.cut, t.tokens, t.link_s, moved)
            client.last_loss = sum(losses) / len(losses)
            if pacer is not None:  # the adapters' upload at the emulated link, before they leave
                pacer.upload(adapters_nbytes(client.payload()))
            client.push(transport, r, {**self.report(), "loss": client.last_loss, "steps": len(losses),
                                       "train_s": own_s,
                                       **({"eval": pending} if pending else {})})
        except ServerRefused as e:  # dropped from this round (late or silent): go on with the next one
            self.say(f"round {r}: {e}; skipping to the next round")
            client.samples_seen = 0
            self.dropped.add(r)
            return
        self.losses[r] = losses
        self.dropped.discard(r)
        budget_s = self.client.budget[0]
        self.say(f"round {r}: cut {cut}, {len(losses)} steps"
                 + (f" in a {budget_s:.2f} s budget" if budget_s is not None else "")
                 + f" at {own_s / len(losses):.3f} s each of its own, mean step loss {client.last_loss:.4f}, "
                 f"{(self.meter.s_per_block_token or 0) * 1e6:.2f} us per block-token")

    def _step(self, r: int, s: int) -> Any:
        """One training step, paced to the emulated device under --emulate (then the client's timing, and so
        its reports, are the paced ones)."""
        client, transport, pacer = self.client, self.transport, self.pacer
        if pacer is None:
            return client.train_step(transport, r, s)
        if not isinstance(client, SplitClient):  # fedlora: the whole model, forward and backward, here
            reply = client.train_step(transport, r, s)
            batch, seq = client.last_shape
            assert client.timing is not None, "set by every training step"
            half = client.timing.compute_s / 2  # its forward and its backward, each paced
            client.timing.compute_s = sum(pacer.half_step(half, client.cut, batch, seq, whole=True, backward=b)
                                          for b in (False, True))
            pacer.step_done()
            return reply
        paced = PacedTransport(transport, pacer, self.id, client.part.tail_cut)  # the step itself unchanged
        reply = client.train_step(paced, r, s)
        assert client.timing is not None, "set by every training step"
        client.timing.compute_s, client.timing.link_s = paced.end()
        return reply

    def _more(self, done: int, elapsed_s: float) -> bool:
        """Whether to run another step: local_steps, or under the server's time budget until it has passed (at
        least one step, at most its cap)."""
        budget_s, cap = self.client.budget
        steps = self.cfg.federation.local_steps
        return another_step(done, elapsed_s, budget_s, steps if budget_s is None else cap or 1)

    def _finish(self) -> None:
        """The final global model, evaluated on this client's own data; then `done`."""
        rounds = self.cfg.federation.rounds
        self.client.pull(self.transport, rounds, self.report(), recut=self.holder.part)
        self.final = _evaluate(self.client, self.transport, self.cfg, self.setup, rounds - 1)
        self.transport.done(self.id, {"eval": self.final})

    def _data_counts(self) -> dict[str, Any]:
        """What became of the data file's rows (a dealt client: the shared file's), and this client's samples."""
        s, examples = self.setup.data_stats, self.setup.train + self.setup.eval
        return {"format": s.format, "rows": s.rows, "train_samples": len(self.setup.train),
                "eval_samples": len(self.setup.eval), "truncated": sum(e.truncated for e in examples),
                "dropped": dict(s.dropped)}

    def results(self, dealt: bool, memory: dict[str, float]) -> dict[str, Any]:
        cfg, t, final = self.cfg, self.transport, self.final
        out: dict[str, Any] = {"client_id": self.id, "data": str(resolve_path(cfg.data.path)), "dealt": dealt,
                               **self._data_counts(),
                               "losses": [x for r in sorted(self.losses) for x in self.losses[r]],
                               "steps_by_round": {str(r): len(v) for r, v in sorted(self.losses.items())},
                               "step_wall_s": quantiles(self.step_walls),
                               "dropped_rounds": sorted(self.dropped), "cuts": self.cuts,
                               "held_gb": round(self.pm.held_gb(), 4), **memory, "measured": self.report(),
                               "precision": self.pm.compute.precision.record(),
                               "eval_loss": final["loss_sum"] / max(final["n_tokens"], 1),
                               "bytes": t.counter.totals(), "wire_up": t.wire_up, "wire_down": t.wire_down,
                               "reconnects": t.reconnects,
                               **({"emulation": self.pacer.summary()} if self.pacer is not None else {})}
        out.update(eval_ppl=perplexity(out["eval_loss"]), eval_acc=final["n_correct"] / max(final["n_tokens"], 1))
        return out


def own_checkpoint(folder: Path, welcome: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any] | None:
    """This client's checkpoint in `folder` if it is of the run the server serves (`welcome`). One of another run
    is refused once that run is under way (round > 0): this client's state would be a mix of two trainings, the
    server's or its own the wrong one; at a fresh run's start it is an older run's, and is left for this run's
    first checkpoint to replace."""
    if not (folder / "checkpoints" / "latest").exists():
        return None
    saved = checkpoint.load(folder)
    if saved.get("run") == welcome["run"]:
        return saved
    if welcome["round"] > 0:
        raise UserError(f"the checkpoint in {folder} is of run {saved.get('run')}, but the server serves run "
                        f"{welcome['run']}, at round {welcome['round']}: if the server was resumed from another "
                        f"run's directory, restart it with its own; if '{folder}' holds an older run's state, move it "
                        "away to join this run with a fresh optimizer")
    say(f"the checkpoint in {folder} is of another run (run {saved.get('run')}); this run starts fresh and replaces "
        "it at its first checkpoint")
    return None


def _evaluate(client: SplitClient | LocalClient, transport: GrpcTransport, cfg: Config, setup: Setup,
              model_round: int) -> dict[str, Any]:
    loss_sum, n_tok, n_ok = client.evaluate(transport, setup.eval, cfg.train.batch_size, setup.pad_id,
                                            max(model_round, 0))
    return {"round": model_round, "loss_sum": loss_sum, "n_tokens": n_tok, "n_correct": n_ok}
