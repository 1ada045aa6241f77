"""`splitft server`: the server of a deployed federation, one process, gRPC.

    splitft server --config cfg.yaml transport.address=0.0.0.0:50051 \\
        transport.tokens_file=tokens.txt transport.tls_cert=server.pem transport.tls_key=server.key
Loads the model (no data), serves every client's steps in the simulation's order, drops clients that go silent
(transport.dead_after_s) or miss the round deadline (transport.round_timeout_s), aggregates each round over the
clients that pushed, and when every client is done or gone writes <out_dir>/adapter (PEFT), server.json (with
who was dropped in which round) and metrics.jsonl.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from .. import lora
from ..build import build_model, check, split_server
from ..config import Config
from ..errors import UserError
from ..metrics import MetricsLogger
from ..rundir import export_adapter, prepare_run_dir
from ..transport import wire
from ..transport.base import ByteCounter, sum_kinds, training_traffic
from ..transport.compress import CODECS
from ..transport.grpc import Endpoint, serve_grpc
from .coordinator import Coordinator


def read_tokens(path: str, n_clients: int) -> dict[int, str]:
    if not path:
        raise UserError("transport.tokens_file: the server needs one token per client (line i = client i); "
                        "make one with: python -c \"import secrets; print(secrets.token_hex(16))\" per line")
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as e:
        raise UserError(f"transport.tokens_file: cannot read '{path}': {e.strerror}") from None
    if len(lines) < n_clients or any(len(t) < 16 for t in lines):
        raise UserError(f"transport.tokens_file: needs {n_clients} tokens of at least 16 characters, "
                        f"one per line; '{path}' has {len(lines)}")
    return dict(enumerate(lines[:n_clients]))


async def _serve(coord: Coordinator, endpoint: Endpoint, tokens: dict[int, str], cfg: Config, log) -> None:
    watchdog = asyncio.create_task(coord.watch())
    try:
        await serve_grpc(endpoint, cfg.transport.address, tokens, cfg.transport, coord.finished, log)
    finally:
        watchdog.cancel()


def serve(cfg: Config) -> dict:
    """Run the server until every client is done; returns what it writes to server.json."""
    check(cfg)
    if cfg.federation.method != "split" or cfg.split.policy != "fixed":
        raise UserError("deployment runs federation.method=split with split.policy=fixed for now; adaptive cuts "
                        "and the no-split baselines run in `splitft simulate` / `splitft experiment`")
    tokens = read_tokens(cfg.transport.tokens_file, cfg.federation.n_clients)
    out = prepare_run_dir(cfg)
    peft, family, _, _ = build_model(cfg)
    server = split_server(cfg, peft, family, cfg.split.cut)
    logger = MetricsLogger(out / "metrics.jsonl")

    def log(text: str) -> None:
        print(f"[server] {text}", file=sys.stderr, flush=True)
        logger.log("server", message=text)

    fed, t = cfg.federation, cfg.transport
    rounds: list[dict] = []
    counter = ByteCounter()
    last_round = counter.snapshot()  # the counts when the previous round ended

    def on_round(record: dict) -> None:  # bytes as in the simulation's records: cumulative, and this round's
        nonlocal last_round
        this_round = sum_kinds(counter.since(last_round))
        last_round = counter.snapshot()
        rounds.append(logger.log("round", **record, bytes=counter.totals(), **training_traffic(this_round)))

    coord = Coordinator(server, fed.n_clients, fed.rounds, fed.local_steps, fed.clients_per_round, fed.seed, log,
                        dead_after_s=t.dead_after_s, round_timeout_s=t.round_timeout_s, on_round=on_round)
    hidden = peft.base_model.model.config.hidden_size
    dtype = next(p for p in peft.parameters()).dtype
    shape = wire.StepShape(hidden, dtype, max_tokens=cfg.train.batch_size * cfg.data.max_length,
                            vocab=peft.base_model.model.config.vocab_size,
                            cut_range=(server.first, server.part.n_layer), codec=CODECS[t.codec])
    full = lora.adapter_state_dict(peft)
    endpoint = Endpoint(coord, shape, {n: t.shape for n, t in full.items()}, max(t.numel() for t in full.values()),
                        counter)
    asyncio.run(_serve(coord, endpoint, tokens, cfg, log))
    export_adapter(peft, server.global_model(cfg.split.cut), out / "adapter")  # the model client 0 evaluates
    summary = {"rounds": coord.round, "clients": fed.n_clients, "wall_time_s": round(logger.elapsed(), 2),
               "dropped_by_round": [r["dropped"] for r in rounds]}
    (out / "server.json").write_text(json.dumps(summary, indent=2))
    logger.close()
    return summary

