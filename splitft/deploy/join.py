"""`splitft client`: one client of a deployed federation, its own process, gRPC to the server.

    SPLITFT_TOKEN=... splitft client --config cfg.yaml --client-id 2 --server host:50051 [key=value ...]
Builds the same setup as the simulation (same seed: same partition), keeps only its own partition, runs its
rounds (pull, local split steps, push), and client 0 evaluates the final global model on the held-out data.
Writes <out_dir>/client_<id>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..build import build_setup as build
from ..build import check, split_client
from ..config import Config
from ..errors import UserError
from ..federation import plan_round
from ..metrics import perplexity
from ..transport.grpc import GrpcTransport, ServerRefused


def join(cfg: Config, client_id: int, address: str) -> dict:
    check(cfg)
    fed = cfg.federation
    if not 0 <= client_id < fed.n_clients:
        raise UserError(f"--client-id: must be in [0, {fed.n_clients - 1}], got {client_id}")
    token = os.environ.get(cfg.transport.token_env, "")
    if not token:
        raise UserError(f"set this client's token in the environment variable {cfg.transport.token_env}")
    setup = build(cfg)
    client = split_client(setup, client_id, cfg.split.cut)  # as in the simulation: both runtimes match
    transport = GrpcTransport(address, client_id, token, cfg.transport,
                              log=lambda text: print(f"[client {client_id}] {text}", file=sys.stderr, flush=True))
    losses: list[float] = []
    dropped: list[int] = []
    for r in range(fed.rounds):
        if client_id not in plan_round(r, list(range(fed.n_clients)), fed.clients_per_round, 1, fed.seed).clients:
            continue
        client.pull(transport, r)
        try:
            round_losses = [client.train_step(transport, r, s).loss for s in range(fed.local_steps)]
            client.push(transport, r)
        except ServerRefused as e:  # dropped from this round (late or silent): go on with the next one
            print(f"[client {client_id}] round {r}: {e}; skipping to the next round", file=sys.stderr, flush=True)
            client.samples_seen, dropped = 0, dropped + [r]
            continue
        losses += round_losses
        print(f"[client {client_id}] round {r}: mean step loss {sum(round_losses) / len(round_losses):.4f}",
              file=sys.stderr, flush=True)
    report: dict = {"client_id": client_id, "losses": losses, "dropped_rounds": dropped}
    if client_id == 0:  # the probe, as in the simulation: the final global model on the held-out data
        client.pull(transport, fed.rounds)
        loss_sum, n_tok, n_ok = client.evaluate(transport, setup.eval, cfg.train.batch_size, setup.pad_id,
                                                fed.rounds)
        report.update(eval_loss=loss_sum / max(n_tok, 1), eval_ppl=perplexity(loss_sum / max(n_tok, 1)),
                      eval_acc=n_ok / max(n_tok, 1))
        print(f"[client 0] final eval_ppl={report['eval_ppl']:.2f}", file=sys.stderr, flush=True)
    transport.done(client_id)
    transport.close()
    report.update(bytes=transport.counter.totals(), wire_up=transport.wire_up, wire_down=transport.wire_down,
                  reconnects=transport.reconnects)
    out = Path(cfg.metrics.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"client_{client_id}.json").write_text(json.dumps(report, indent=2))
    return report
