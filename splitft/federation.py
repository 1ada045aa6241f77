"""One federated round end to end: select clients, sync adapters, interleave split steps, FedAvg, evaluate.

Step order inside a round is round-robin over the selected clients in a seeded permutation, so the shared
server model sees the clients interleaved (c2, c0, c1, c2, c0, c1, ...) rather than one client's whole round
after another's, and the same seed gives the same order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from .client import SplitClient
from .data.datasets import Example
from .lora import load_adapter_state_dict
from .metrics import MetricsLogger, perplexity
from .server import SplitServer
from .transport.base import Transport


@dataclass
class RoundPlan:
    round: int
    clients: list[int]
    order: list[tuple[int, int]]
    """(client_id, step) in execution order."""


def plan_round(round_: int, client_ids: list[int], per_round: int, local_steps: int, seed: int) -> RoundPlan:
    """Pure: which clients take part and in which order their steps run (seeded by (seed, round))."""
    rng = random.Random(seed * 1_000_003 + round_)
    chosen = sorted(rng.sample(client_ids, per_round)) if 0 < per_round < len(client_ids) else list(client_ids)
    perm = rng.sample(chosen, len(chosen))
    return RoundPlan(round_, chosen, [(c, s) for s in range(local_steps) for c in perm])


class Federation:
    """Drives rounds over clients that share one transport to one server (in-process or remote)."""

    def __init__(self, server: SplitServer, clients: dict[int, SplitClient], transport: Any, *,
                 eval_examples: list[Example], batch_size: int, pad_id: int, local_steps: int,
                 clients_per_round: int, seed: int, logger: MetricsLogger,
                 on_step: Callable[[dict[str, Any]], None] | None = None):
        self.server, self.clients, self.transport = server, clients, transport
        self.eval_examples, self.batch_size, self.pad_id = eval_examples, batch_size, pad_id
        self.local_steps, self.per_round, self.seed = local_steps, clients_per_round, seed
        self.logger = logger
        self.on_step = on_step or (lambda record: None)

    def run_round(self, round_: int, evaluate: bool) -> dict[str, Any]:
        plan = plan_round(round_, sorted(self.clients), self.per_round, self.local_steps, self.seed)
        before = self.transport.counter.totals()
        for cid in plan.clients:
            self.clients[cid].pull(self.transport)
        losses = [self._step(cid, round_, step) for cid, step in plan.order]
        for cid in plan.clients:
            self.clients[cid].push(self.transport, round_)
        merged = self.server.aggregate()
        record: dict[str, Any] = {
            "round": round_, "clients": merged, "cuts": {str(c): self.clients[c].cut for c in plan.clients},
            "train_loss": sum(losses) / len(losses),
        }
        if evaluate:
            record.update(self.evaluate(round_))
        totals = self.transport.counter.totals()
        delta = {k: totals[k] - before[k] for k in totals}
        record.update(bytes=totals, bytes_up=delta["activations_up"] + delta["labels_up"] + delta["lora_up"],
                      bytes_down=delta["grad_activations_down"] + delta["lora_down"])
        return self.logger.log("round", **record)

    def _step(self, cid: int, round_: int, step: int) -> float:
        client = self.clients[cid]
        before = self.transport.counter.bytes[cid].copy()
        reply = client.train_step(self.transport, round_, step)
        after = self.transport.counter.bytes[cid]
        rec = self.logger.log(
            "step", round=round_, step=step, client_id=cid, cut=client.cut, loss=reply.loss,
            n_tokens=reply.n_tokens,
            bytes_up=after["activations_up"] + after["labels_up"] - before["activations_up"] - before["labels_up"],
            bytes_down=after["grad_activations_down"] - before["grad_activations_down"],
        )
        self.on_step(rec)
        return reply.loss

    def evaluate(self, round_: int) -> dict[str, float]:
        """Held-out loss/ppl/next-token accuracy of the global model (global client adapters + server).

        The probe client loads the global adapters straight from the server (a measurement, not protocol
        traffic); its eval batches still cross the transport and are counted as eval_up / eval_down.
        """
        probe = self.clients[min(self.clients)]
        load_adapter_state_dict(probe.part.module, self.server.global_adapters(probe.cut))
        loss_sum, n_tok, n_ok = probe.evaluate(self.transport, self.eval_examples, self.batch_size, self.pad_id,
                                               round_)
        loss = loss_sum / max(n_tok, 1)
        return {"eval_loss": loss, "eval_ppl": perplexity(loss), "eval_acc": n_ok / max(n_tok, 1),
                "eval_tokens": n_tok}
