"""The server's side of a deployed federation, independent of the network: orders the steps of a round as the
simulation does, refuses out-of-turn requests, answers resent requests from a cache instead of applying them
twice, drops clients that go silent or miss the round deadline, and aggregates over the survivors.

With the same config and seed, and no client dropped, a deployment applies the same updates in the same order
as `splitft simulate` and ends with the same LoRA weights. Every method is a coroutine awaited by the
transport; the server's torch work runs in one worker thread (`worker.Worker`), so the loop stays free.

The round's state and its rules are synchronous and tested with plain calls: `rounds.RoundState` (who pulled,
pushed or was dropped, what each client trained, whether a push may be taken, the round's record) with its
`turns.Turns` (which training requests are admitted, which steps are ready to run), and `rounds.Liveness`. The
training and evaluation steps are served by `steps.Steps` (turns, joined server steps, U's halves, the resend
cache). This class is the asyncio shell of the round: hello, pull, push, drop, aggregate, finish.

Liveness: the transport calls `seen(cid)` for every frame (requests and heartbeats), and `check(now)` (every
second, from `watch`) drops a selected client that has been silent for `dead_after_s`, or has not pushed
`round_timeout_s` after its round began. A dropped client's steps still due are taken out of the round's order,
its waiting requests are refused, and the round aggregates when every survivor has pushed.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..fedavg import FedAvgServer
from ..schedule import RoundPlan, Schedule, default_budget_s, plan_round
from ..transport.base import AdapterUpdate, BackwardRequest, ForwardRequest, Pulled, StepReply
from .handshake import differences
from .placement import Placement
from .rounds import Liveness, Refused, RoundState, eval_of, pace_of
from .steps import Steps
from .worker import Worker, to_the_end

__all__ = ["Coordinator", "Refused"]


class Coordinator:
    """The `transport.base.AsyncServer` of a deployment: a `SplitServer` (or, for fedlora, a `FedAvgServer`)
    behind the rules above, with each round's cuts from `placement`.

    Evaluations come from the clients: each evaluates the global model it pulled on its own held-out data and
    reports it with its next push (the model after the previous round) or with `done` (the final model);
    `evals[round][client]` = (loss_sum, n_tokens, n_correct, cut), and `on_eval(round)` is called once a round's
    evaluations are all in."""

    def __init__(self, server: FedAvgServer, n_clients: int, rounds: int, local_steps: int, per_round: int,
                 seed: int, log: Callable[[str], Any] = print, *, run_id: str | None = None,
                 dead_after_s: float = 120.0, round_timeout_s: float = 1800.0,
                 clock: Callable[[], float] = time.monotonic, schedule: Schedule | None = None,
                 placement: Placement | None = None, max_cut: int | None = None, samples_cap: int | None = None,
                 terms: dict[str, Any] | None = None,
                 pace: Callable[[float, list[tuple[int, int, int]], str], float] | None = None,
                 on_round: Callable[[dict[str, Any]], Any] | None = None, on_eval: Callable[[int], Any] | None = None,
                 on_boundary: Callable[[], Any] | None = None,
                 on_served: Callable[[list[ForwardRequest], float], Any] | None = None):
        self.server, self.n_clients, self.rounds = server, n_clients, rounds
        self.local_steps, self.per_round, self.seed, self.log = local_steps, per_round, seed, log
        self.schedule, self.clock, self.placement = schedule or Schedule(), clock, placement
        self.max_cut = max_cut  # without a placement: the largest cut a pull may ask for (never the server's blocks)
        self.samples_cap = samples_cap  # without split steps (fedlora): the most samples a push may claim
        self.terms = terms  # what a client's HELLO must agree with (`handshake.py`); None: not checked
        self.on_round = on_round or (lambda record: None)
        self.on_eval = on_eval or (lambda round_: None)  # a round's evaluations are all in
        self.on_boundary = on_boundary or (lambda: None)  # a round was aggregated and the next one set up
        self.run_id = run_id or secrets.token_hex(8)  # this run's id (its `run` record), kept across a resume
        self.server_id = secrets.token_hex(8)  # this server process's: a client that sees it change knows
        self.processes: dict[int, str] = {}  # client -> the id of its process at its last HELLO
        self.alive = Liveness(dead_after_s, round_timeout_s, clock())
        self.current = self._round_state(0)
        self.step_s: dict[int, float] = {}  # client -> seconds per training step it reported last
        self.evals: dict[int, dict[int, tuple[float, int, int, int]]] = {}
        self.finished_clients: set[int] = set()
        self.closing = False  # a round is being aggregated (its aggregation awaits the worker)
        self.finished = asyncio.Event()
        self.worker = Worker()
        self.steps = Steps(server, self.worker, self, self.schedule, log, clock, pace, on_served)

    def _round_state(self, round_: int) -> RoundState:
        """The round's clients and turns; under a time budget each client gets turns up to the cap, and those it
        does not use leave the order when it pushes."""
        cap = self.schedule.cap(self.local_steps)
        plan = plan_round(round_, list(range(self.n_clients)), self.per_round, cap, self.seed)
        return RoundState(plan, self.schedule, cap, self.clock())

    @property
    def round(self) -> int:
        """The round the federation is at (= rounds once the last is aggregated)."""
        return self.current.number

    @property
    def plan(self) -> RoundPlan:
        return self.current.plan

    @property
    def pos(self) -> int:
        return self.current.turns.pos

    @property
    def done_steps(self) -> Counter[int]:
        return self.current.turns.done

    def _check_client(self, cid: int) -> None:
        if not 0 <= cid < self.n_clients:
            raise Refused(f"unknown client id {cid} (this federation has {self.n_clients})")

    def seen(self, cid: int) -> None:
        """Any frame from `cid` (a request or a heartbeat): it is alive."""
        if 0 <= cid < self.n_clients:
            self.alive.seen(cid, self.clock())

    async def hello(self, cid: int, terms: dict[str, Any]) -> dict[str, Any]:
        """A client connected: refuse it if its terms differ from the server's, and say where the federation
        stands. `start` is the round it takes part from: the current one, or the next when it was dropped from
        this one or a restarted client's previous process was already in it (that process is dropped from it: the
        others do not wait)."""
        self._check_client(cid)
        if self.terms is not None and (diff := differences(self.terms, terms)):
            raise Refused(f"client {cid} does not match this server: {'; '.join(diff)}; start every client with "
                          "the server's config")
        process, before = str(terms.get("process", "")), self.processes.get(cid)
        self.processes[cid] = process
        start = self.round
        if before is not None and before != process and self.round < self.rounds:
            start = await self._restarted(cid)
        elif cid in self.current.dropped:  # e.g. it slept past dead_after_s: back at its next round
            start = self.round + 1
        return {"round": self.round, "start": start, "rounds": self.rounds, "run": self.run_id,
                "server": self.server_id}

    async def _restarted(self, cid: int) -> int:
        """The round a restarted client joins at: the current one unless its old process took part in it."""
        if cid not in self.plan.clients or not self.current.began(cid):
            self.log(f"client {cid} restarted; it joins round {self.round}")
            return self.round
        if cid not in self.current.pushed:
            await self.drop(cid, "it restarted during the round")
        self.log(f"client {cid} restarted during round {self.round}; it rejoins at round {self.round + 1}")
        return self.round + 1

    async def pull_adapters(self, cid: int, cut: int, round_: int,
                            report: dict[str, Any] | None = None) -> Pulled:
        """The client's cut for `round_` and the global adapters of its blocks, once rounds [0, round_) are
        aggregated (round_ = rounds: the final ones, at the client's last cut). The cut asked for is ignored:
        the placement decides it (a client never gets adapters of blocks it does not hold)."""
        self._check_client(cid)
        if not 0 <= round_ <= self.rounds:
            raise Refused(f"round {round_} outside [0, {self.rounds}]")
        await self.worker.wait(lambda: self.round >= round_)
        if self.round > round_:
            raise Refused(f"stale round {round_}: the federation is at round {self.round}")
        if self.placement is None:
            if self.max_cut is not None and not 1 <= cut <= self.max_cut:
                raise Refused(f"cut {cut} outside [1, {self.max_cut}]: a client never gets adapters of the "
                              "server's blocks")
            return await self._hand_out(cid, round_, cut)
        placement = self.placement
        placement.note(cid, report or {})
        if round_ < self.rounds and placement.decided < round_:
            self.current.pulled.add(cid)
            await self._maybe_decide()
            await self.worker.wait(lambda: placement.decided >= round_ or self.round != round_)
        if cid in placement.refused:
            why = placement.refused[cid]
            self.finished_clients.add(cid)  # it has no place in this federation: the run does not wait for it
            await self.drop(cid, why)
            raise Refused(why)
        return await self._hand_out(cid, round_, placement.cut_of(cid))

    async def _hand_out(self, cid: int, round_: int, cut: int) -> Pulled:
        if round_ == self.round:
            self.current.holds[cid] = cut
        adapters = await self.worker.compute(self.server.global_adapters, cut)
        return Pulled(cut, adapters, **(self.round_budget() if round_ < self.rounds else {}))

    async def _maybe_decide(self) -> None:
        """Decide the current round's cuts once every selected client still in it has pulled."""
        p = self.placement
        if p is None or self.round >= self.rounds or p.decided >= self.round:
            return
        if set(self.plan.clients) - set(self.current.dropped) <= self.current.pulled:
            p.decide(self.round, list(range(self.n_clients)))
            await self.worker.notify()

    async def step(self, req: ForwardRequest) -> StepReply:
        """A training step in its turn, or an evaluation any time (`steps.Steps.step`)."""
        self._check_client(req.client_id)
        return await self.steps.step(req)

    async def backward(self, req: BackwardRequest) -> StepReply:
        """The second half of a U-shaped step (`steps.Steps.backward`)."""
        self._check_client(req.client_id)
        return await self.steps.backward(req)

    def round_budget(self) -> dict[str, Any]:
        """What a client's round runs to: local_steps, or (time budget) seconds and a cap on steps. The budget is
        federation.round_time_s, or `default_budget_s` of the seconds per step each of this round's clients
        reported last (its own compute and link, not its waits for other clients' turns, as the simulation prices
        it from the profile); a round before any report runs local_steps."""
        sch = self.schedule
        if sch.budget != "time":
            return {}
        seconds = sch.round_time_s or default_budget_s(self.step_s, self.plan.clients, self.local_steps)
        return {} if seconds is None else {"budget_s": seconds, "max_steps": sch.cap(self.local_steps)}

    async def push_adapters(self, update: AdapterUpdate) -> None:
        """Take a client's adapters; a resent push of an accepted one is acknowledged and ignored."""
        self._check_client(update.client_id)
        cid = update.client_id
        cut = self.current.holds.get(cid) if update.round == self.round else None
        # the shapes it must match, read in the worker first: the checks below and the taking then run with no
        # await between them, so a drop, a resend or the round's end cannot slip in
        want = {} if cut is None else await self.worker.compute(self.server.global_adapters, cut)
        due = 0 if not self.local_steps else 1 if self.schedule.budget == "time" and self.round_budget() \
            else self.local_steps
        cap = self.current.trained[cid] if self.local_steps else self.samples_cap
        if not self.current.take_push(update, cut, want, due, cap):
            self.log(f"client {cid}: push of round {update.round} resent; ignored")
            return
        self.server.push_adapters(update)  # inline: it only queues the update for `aggregate`
        self.steps.refuse_waiting(self.current.turns.leave(cid), f"client {cid} pushed round {update.round}: its "
                             "round's steps are over")  # the turns it left unused
        await self.worker.notify()  # a step waiting behind those turns may go now
        if (pace := pace_of(update.report)) is not None:
            self.step_s[cid] = pace
        if self.placement is not None:
            self.placement.note(cid, update.report)
        self._note_eval(cid, update.report)
        await self._maybe_aggregate()

    def _note_eval(self, cid: int, report: dict[str, Any]) -> None:
        """Keep a client's evaluation of a global model (ignored unless well-formed, `rounds.eval_of`)."""
        if (e := eval_of(report, self.rounds)) is not None:
            cut = self.placement.cut_of(cid) if self.placement is not None else 0
            self.evals.setdefault(e[0], {})[cid] = (*e[1:], cut)

    async def _maybe_aggregate(self) -> None:
        if self.closing or self.round >= self.rounds or not self.current.complete:
            return
        self.closing = True  # a drop or a push while the worker aggregates must not aggregate the round again
        await to_the_end(self._close_round())  # the round ends whole even if the push that ended it is cancelled

    async def _close_round(self) -> None:
        try:
            merged = await self.worker.compute(self.server.aggregate)
        finally:
            self.closing = False
        dropped = self.current.dropped
        self.log(f"round {self.round}: aggregated clients {merged}" + (f"; dropped {dropped}" if dropped else ""))
        self.on_eval(self.round - 1)  # the pushes of this round carried the evaluations of the previous model
        cuts = {str(c): self.placement.cut_of(c) for c in self.plan.clients} if self.placement else {}
        self.on_round(self.current.record(merged, cuts))
        if self.placement is not None and self.round + 1 < self.rounds:
            self.placement.decide(self.round + 1, list(range(self.n_clients)))
        self.current = self._round_state(self.round + 1)
        self.on_boundary()  # e.g. a checkpoint, before any client can see the new round
        await self.worker.notify()
        await self.check(self.current.started)  # a client already gone is dropped from the new round at once

    def state_dict(self) -> dict[str, Any]:
        """At a round boundary: the round to run next, the run's id, the evaluations reported so far."""
        return {"round": self.round, "run": self.run_id, "step_s": {str(c): v for c, v in self.step_s.items()},
                "evals": {str(r): {str(c): list(v) for c, v in by.items()} for r, by in self.evals.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Stand at the start of `state`'s round, as when that round began (a resumed server)."""
        self.run_id = str(state["run"])
        self.evals = {int(r): {int(c): tuple(v) for c, v in by.items()} for r, by in state["evals"].items()}
        self.step_s = {int(c): float(v) for c, v in state.get("step_s", {}).items()}
        self.current = self._round_state(int(state["round"]))

    async def drop(self, cid: int, why: str) -> None:
        """Take `cid` out of the current round: its remaining steps leave the order, its waiting requests are
        refused, and the round aggregates over the others once they have pushed."""
        if self.round >= self.rounds or not self.current.expects(cid):
            return
        self.log(f"round {self.round}: dropped client {cid}: {why}")
        self.steps.refuse_waiting(self.current.drop(cid, why), f"client {cid} was dropped from round {self.round} "
                             f"({why}); it rejoins at its next round")
        self.steps.abandon(cid)
        await self.worker.notify()
        await self._maybe_decide()
        await self._maybe_aggregate()

    async def check(self, now: float) -> None:
        """Drop the silent and the late (`rounds.Liveness`); finish once the last round is aggregated and every
        client is done or gone."""
        round_ = self.round
        for cid in self.plan.clients if round_ < self.rounds else []:
            if self.round != round_:  # a drop completed the round
                break
            if (why := self.alive.why_drop(cid, now, self.current.started)) is not None:
                await self.drop(cid, why)
        gone = self.alive.gone(range(self.n_clients), now) - self.finished_clients
        if self.round >= self.rounds and len(self.finished_clients | gone) == self.n_clients \
                and not self.finished.is_set():
            if gone:
                self.log(f"finishing without clients {sorted(gone)} (silent or never connected)")
            self.finished.set()

    async def watch(self, every_s: float = 1.0) -> None:
        while not self.finished.is_set():
            await self.check(self.clock())
            await asyncio.sleep(every_s)

    async def done(self, cid: int, report: dict[str, Any] | None = None) -> None:
        """`cid` has finished; its report may carry its evaluation of the final model."""
        self._check_client(cid)
        self._note_eval(cid, report or {})
        self.finished_clients.add(cid)
        if len(self.finished_clients) == self.n_clients:
            self.finished.set()
