"""The server's side of a deployed federation, independent of the network: orders the steps of a round as the
simulation does, refuses replays and out-of-turn requests, aggregates when every selected client has pushed.

With the same config and seed a deployment therefore applies the same updates in the same order as
`splitft simulate`, and ends with the same LoRA weights. Every method is a coroutine awaited by the transport;
the torch work runs inline (one request at a time, like the simulation).
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from ..federation import plan_round
from ..server import SplitServer
from ..transport.base import AdapterUpdate, ForwardRequest, StepReply


class Refused(ValueError):
    """A request that is well-formed but not acceptable now (replay, unknown client, stale round)."""


class Coordinator:
    def __init__(self, server: SplitServer, n_clients: int, rounds: int, local_steps: int, per_round: int,
                 seed: int, log: Any = print):
        self.server, self.n_clients, self.rounds = server, n_clients, rounds
        self.local_steps, self.per_round, self.seed, self.log = local_steps, per_round, seed, log
        self.round, self.pos = 0, 0
        self.plan = self._plan(0)
        self.pushed: set[int] = set()
        self.done: set[int] = set()
        self.changed = asyncio.Condition()
        self.finished = asyncio.Event()

    def _plan(self, round_: int):
        return plan_round(round_, list(range(self.n_clients)), self.per_round, self.local_steps, self.seed)

    def _check_client(self, cid: int) -> None:
        if not 0 <= cid < self.n_clients:
            raise Refused(f"unknown client id {cid} (this federation has {self.n_clients})")

    async def _wait(self, predicate) -> None:
        async with self.changed:
            await self.changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def pull(self, cid: int, cut: int, round_: int) -> dict[str, torch.Tensor]:
        """The global adapters for `cut` once rounds [0, round_) are aggregated (round_ = rounds: the final ones)."""
        self._check_client(cid)
        if not 0 <= round_ <= self.rounds:
            raise Refused(f"round {round_} outside [0, {self.rounds}]")
        await self._wait(lambda: self.round >= round_)
        if self.round > round_:
            raise Refused(f"stale round {round_}: the federation is at round {self.round}")
        return self.server.global_adapters(cut)

    async def step(self, req: ForwardRequest) -> StepReply:
        """Training steps run in the round's plan order; evaluation requests (train=False) run any time."""
        self._check_client(req.client_id)
        if not req.train:
            return self.server.step(req)
        key = (req.client_id, req.step)
        if req.round != self.round or key not in self.plan.order[self.pos:]:
            raise Refused(f"step {key} of round {req.round} is a replay or not in this round's plan "
                          f"(federation at round {self.round})")
        await self._wait(lambda: self.round == req.round and self.plan.order[self.pos] == key)
        reply = self.server.step(req)
        self.pos += 1
        await self._notify()
        return reply

    async def push(self, update: AdapterUpdate) -> None:
        self._check_client(update.client_id)
        if update.round != self.round or update.client_id not in self.plan.clients:
            raise Refused(f"push for round {update.round} from client {update.client_id} is not expected now")
        if update.client_id in self.pushed:
            raise Refused(f"client {update.client_id} already pushed round {update.round}")
        self.server.receive_adapters(update)
        self.pushed.add(update.client_id)
        if self.pushed == set(self.plan.clients):
            merged = self.server.aggregate()
            self.log(f"round {self.round}: aggregated clients {merged}")
            self.round, self.pos, self.pushed = self.round + 1, 0, set()
            self.plan = self._plan(self.round)
            await self._notify()

    async def client_done(self, cid: int) -> None:
        self._check_client(cid)
        self.done.add(cid)
        if len(self.done) == self.n_clients:
            self.finished.set()
