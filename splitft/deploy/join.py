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

import os
import sys
from pathlib import Path
from typing import Any

from ..build import (
    PartialModel,
    Setup,
    check,
    check_model,
    client_stream,
    cut_rank,
    load_data,
    open_model,
    optimizer_settings,
    split_client_with,
)
from ..client import LocalClient, SplitClient
from ..config import Config
from ..data.datasets import Example, load_examples, read_rows, resolve_path, split_eval
from ..data.partitioners import partitioner_for, samples_of
from ..errors import UserError
from ..federation import plan_round
from ..measure import Meter, check_profile, client_report, peak_memory
from ..metrics import perplexity
from ..model.split import ClientPart, FullPart
from ..seeding import derive_seed
from ..transport.grpc import GrpcTransport, ServerRefused
from .handshake import terms_of
from .serve import deploy_problems, write_json


def client_data(cfg: Config, client_id: int, tokenizer: Any, dealt: bool) -> tuple[list[Example], list[Example]]:
    """(training examples, held-out examples) of this client: its own file, or (`dealt`) its partition of the
    federation's shared file and the simulation's held-out slice."""
    if dealt:
        train, held_out, _ = load_data(cfg, tokenizer)
        parts = partitioner_for(cfg.data, cfg.federation.n_clients, cfg.federation.seed).partition(samples_of(train))
        return [train[i] for i in parts[client_id]], held_out
    examples, _ = load_examples(cfg.data, tokenizer, derive_seed(cfg.federation.seed, "data", client_id))
    return split_eval(examples, cfg.data.eval_fraction, cfg.data.max_eval_samples)


class Holder:
    """This client's part of the model, and the mechanism that changes it: loads the blocks a larger cut needs
    from the model file, drops those a smaller cut leaves (the policy decides; this applies)."""

    def __init__(self, pm: PartialModel, r_cut: int | None):
        self.pm, self.r_cut, self.cut = pm, r_cut, 0

    def part(self, cut: int) -> ClientPart | FullPart:
        pm = self.pm
        if cut > self.cut:
            pm.hold(pm.client_paths(cut))
        part = FullPart(pm.peft, pm.family) if cut >= pm.n_layer else ClientPart(pm.peft, pm.family, cut, self.r_cut)
        if 0 < cut < self.cut:
            pm.drop(pm.blocks(range(cut, self.cut)))
        self.cut = cut
        return part


def join(cfg: Config, client_id: int, address: str, dealt: bool = False) -> dict:
    check(cfg, deploy_problems)
    check_profile(cfg)
    fed = cfg.federation
    if not 0 <= client_id < fed.n_clients:
        raise UserError(f"--client-id: must be in [0, {fed.n_clients - 1}], got {client_id}")
    token = os.environ.get(cfg.transport.token_env, "")
    if not token:
        raise UserError(f"set this client's token in the environment variable {cfg.transport.token_env}")
    read_rows(cfg.data)  # a missing, empty or unreadable data file fails here, before any weight is read
    meta = check_model(cfg)
    pm = open_model(cfg, meta)
    train, held_out = client_data(cfg, client_id, pm.tokenizer, dealt)
    say = lambda text: print(f"[client {client_id}] {text}", file=sys.stderr, flush=True)  # noqa: E731
    say(f"{len(train)} training and {len(held_out)} held-out samples from "
        f"{'its share of ' if dealt else ''}{resolve_path(cfg.data.path)}")
    holder = Holder(pm, cut_rank(cfg))
    split = fed.method == "split"
    setup = Setup(cfg, pm.peft, pm.family, pm.tokenizer, train, held_out, {}, pm.device, [])
    stream = client_stream(setup, client_id, list(range(len(train))))
    first_cut = cfg.split.cut if split else pm.n_layer
    if split:
        client: SplitClient | LocalClient = split_client_with(cfg, client_id, holder.part(first_cut), stream)
    else:
        client = LocalClient(client_id, holder.part(first_cut), stream, **optimizer_settings(cfg))
    transport = GrpcTransport(address, client_id, token, cfg.transport, log=say)
    try:
        transport.hello(terms_of(cfg, pm.fingerprint))
    except ServerRefused as e:
        transport.close()
        raise UserError(str(e)) from None
    meter = Meter(cfg.measure.ewma)
    report = lambda: client_report(cfg, meter, pm.held_gb(), pm.device)  # noqa: E731
    losses: list[float] = []
    dropped: list[int] = []
    cuts: dict[str, int] = {}
    pending_eval: dict[str, Any] | None = None
    for r in range(fed.rounds):
        if client_id not in plan_round(r, list(range(fed.n_clients)), fed.clients_per_round, 1, fed.seed).clients:
            continue
        cut = client.pull(transport, r, report(), recut=holder.part)
        cuts[str(r)] = cut
        if r == 0 or r % cfg.metrics.eval_every == 0:  # the model after round r-1, as the simulation evaluates it
            pending_eval = _evaluate(client, transport, cfg, setup, r - 1)
        try:
            round_losses = []
            for s in range(fed.local_steps):
                before = transport.counter.snapshot([client_id])
                reply = client.train_step(transport, r, s)
                moved = sum(transport.counter.since(before)[client_id].values())
                round_losses.append(reply.loss)
                t = client.timing
                meter.step(t.compute_s, client.cut, t.tokens, t.link_s, moved)
            client.last_loss = sum(round_losses) / len(round_losses)
            client.push(transport, r, {**report(), "loss": client.last_loss,
                                       **({"eval": pending_eval} if pending_eval else {})})
            pending_eval = None
        except ServerRefused as e:  # dropped from this round (late or silent): go on with the next one
            say(f"round {r}: {e}; skipping to the next round")
            client.samples_seen, dropped = 0, dropped + [r]
            continue
        losses += round_losses
        say(f"round {r}: cut {cut}, mean step loss {client.last_loss:.4f}, "
            f"{(meter.s_per_block_token or 0) * 1e6:.2f} us per block-token")
    client.pull(transport, fed.rounds, report(), recut=holder.part)  # the final global model, on its own data
    final = _evaluate(client, transport, cfg, setup, fed.rounds - 1)
    transport.done(client_id, {"eval": final})
    transport.close()
    memory = peak_memory()
    out: dict[str, Any] = {"client_id": client_id, "data": str(resolve_path(cfg.data.path)), "dealt": dealt,
                           "train_samples": len(train), "eval_samples": len(held_out), "losses": losses,
                           "dropped_rounds": dropped, "cuts": cuts, "held_gb": round(pm.held_gb(), 4), **memory,
                           "measured": report(), "eval_loss": final["loss_sum"] / max(final["n_tokens"], 1),
                           "bytes": transport.counter.totals(), "wire_up": transport.wire_up,
                           "wire_down": transport.wire_down, "reconnects": transport.reconnects}
    out.update(eval_ppl=perplexity(out["eval_loss"]), eval_acc=final["n_correct"] / max(final["n_tokens"], 1))
    say(f"final eval_ppl={out['eval_ppl']:.2f} on its held-out data; peak RSS {memory['peak_rss_gb']:.3f} GB, "
        f"holding {out['held_gb']:.3f} GB of base weights")
    dest = Path(cfg.metrics.out_dir)
    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / f"client_{client_id}.json", out)
    return out


def _evaluate(client: SplitClient | LocalClient, transport: GrpcTransport, cfg: Config, setup: Setup,
              model_round: int) -> dict[str, Any]:
    loss_sum, n_tok, n_ok = client.evaluate(transport, setup.eval, cfg.train.batch_size, setup.pad_id,
                                            max(model_round, 0))
    return {"round": model_round, "loss_sum": loss_sum, "n_tokens": n_tok, "n_correct": n_ok}
