"""The server's side of a deployed federation, independent of the network: orders the steps of a round as the
simulation does, refuses out-of-turn requests, answers resent requests from a cache instead of applying them
twice, drops clients that go silent or miss the round deadline, and aggregates over the survivors.

With the same config and seed, and no client dropped, a deployment applies the same updates in the same order
as `splitft simulate` and ends with the same LoRA weights. Every method is a coroutine awaited by the
transport. The server's torch work runs in a worker thread, one call at a time (`_compute`), so the event loop
keeps receiving requests and sending replies while a step computes: a request that waited unread behind another
client's step would reach its client's clock as link time, and that client's next time budget would be too long.

Which training requests are admitted and which steps are ready to run (alone, or `federation.server_batch` of
them joined into one server step) is the synchronous core `turns.Turns` (no asyncio, tested with plain calls);
this class is the asyncio shell around it and the server: waits, the worker thread, replies, caches, liveness.

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
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ..fedavg import FedAvgServer
from ..optim import NonFiniteStep
from ..schedule import RoundPlan, default_budget_s, plan_round
from ..transport.base import AdapterUpdate, BackwardRequest, ForwardRequest, Pulled, StepReply
from .handshake import differences
from .placement import Placement
from .turns import Key, Turns

# One thread for every call into a server: torch's thread pools and state stay with one thread, as when the calls
# ran on the loop's (a call in a fresh thread each time would start a fresh OpenMP team and crowd 2 cores).
_SERVER_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="splitft-server")


class Refused(ValueError):
    """A request that is well-formed but not acceptable now (replay, unknown client, stale round, dropped)."""


class Coordinator:
    """The `transport.base.AsyncServer` of a deployment: a `SplitServer` (or, for fedlora, a `FedAvgServer`)
    behind the rules above, with each round's cuts from `placement`.

    Evaluations come from the clients: each evaluates the global model it pulled on its own held-out data and
    reports it with its next push (the model after the previous round) or with `done` (the final model);
    `evals[round][client]` = (loss_sum, n_tokens, n_correct, cut), and `on_eval(round)` is called once a round's
    evaluations are all in."""

    def __init__(self, server: FedAvgServer, n_clients: int, rounds: int, local_steps: int, per_round: int,
                 seed: int, log: Callable[[str], Any] = print, *, run_id: str | None = None,
                 dead_after_s: float = 120.0,
                 round_timeout_s: float = 1800.0, on_round: Callable[[dict[str, Any]], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic, placement: Placement | None = None,
                 on_eval: Callable[[int], Any] | None = None, max_cut: int | None = None,
                 samples_cap: int | None = None, terms: dict[str, Any] | None = None,
                 on_boundary: Callable[[], Any] | None = None, order: str = "plan", budget: str = "steps",
                 round_time_s: float = 0.0, max_steps: int | None = None,
                 pace: Callable[[float, list[tuple[int, int, int]], str], float] | None = None, server_batch: int = 1,
                 batch_wait_s: float = 0.0, on_served: Callable[[list[ForwardRequest], float], Any] | None = None):
        self.placement = placement
        self.pace = pace  # --emulate: (real seconds, [(cut, batch, seq)] of a server step, half) -> seconds it
        # must still take (`ServerPacer.rest`; half: "step", or under U "forward" / "backward")
        self.server_batch, self.batch_wait_s = server_batch, batch_wait_s
        self.on_served = on_served or (lambda reqs, seconds: None)  # a vanilla server step: its requests, seconds
        self.joining: dict[Key, tuple[ForwardRequest, asyncio.Future]] = {}
        """server_batch > 1: training steps waiting to join a server step (`Turns.waiting`): their request and
        their reply's future."""
        self.in_batch: dict[Key, asyncio.Future] = {}  # the steps of the server step computing
        self.serving = asyncio.Lock()  # one training step at a time, its emulated time included
        self.torch = asyncio.Lock()  # one call into `server` at a time, in a worker thread (`_compute`)
        self.closing = False  # a round is being aggregated (its aggregation awaits the worker)
        self.order, self.budget, self.round_time_s = order, budget, round_time_s
        self.max_steps = max_steps or local_steps  # under a time budget: the most steps a client runs in a round
        self.step_s: dict[int, float] = {}  # client -> seconds per training step it reported last
        self.on_boundary = on_boundary or (lambda: None)  # a round was aggregated and the next one set up
        self.terms = terms  # what a client's HELLO must agree with (`handshake.py`); None: not checked
        self.run_id = run_id or secrets.token_hex(8)  # this run's id (its `run` record), kept across a resume
        self.server_id = secrets.token_hex(8)  # this server process's: a client that sees it change knows
        self.processes: dict[int, str] = {}  # client -> the id of its process at its last HELLO
        self.max_cut = max_cut  # without a placement: the largest cut a pull may ask for (never the server's blocks)
        self.samples_cap = samples_cap  # without split steps (fedlora): the most samples a push may claim
        self.holds: dict[int, int] = {}  # client -> the cut it pulled for the current round (what it may push)
        self.trained: Counter[int] = Counter()  # client -> samples of its training steps applied this round
        self.train_tokens = 0  # label tokens of the training steps applied this round
        self.server_steps = 0  # server steps this round (fewer than the training steps when they are joined)
        self.on_eval = on_eval or (lambda round_: None)
        self.evals: dict[int, dict[int, tuple[float, int, int, int]]] = {}
        self.pulled: set[int] = set()  # clients that pulled the current round (round 0 is decided when all have)
        self.server, self.n_clients, self.rounds = server, n_clients, rounds
        self.local_steps, self.per_round, self.seed, self.log = local_steps, per_round, seed, log
        self.dead_after_s, self.round_timeout_s, self.clock = dead_after_s, round_timeout_s, clock
        self.on_round = on_round or (lambda record: None)
        self.round = 0
        self.turns = self._turns(0)
        self.pushed: set[int] = set()
        self.dropped: dict[int, str] = {}  # this round: client -> why
        self.finished_clients: set[int] = set()
        self.cache: dict[int, tuple[tuple[int, int, int], StepReply]] = {}  # client -> its last applied step
        self.forwarded: dict[int, tuple[tuple[int, int, int], StepReply]] = {}  # U: client -> its forward in flight
        self.t0 = self.started = clock()  # when the server / the current round began
        self.last_seen: dict[int, float] = {}
        self.changed = asyncio.Condition()
        self.finished = asyncio.Event()

    def _turns(self, round_: int) -> Turns:
        """The round's clients and turns; under a time budget each client gets turns up to the cap, and those it
        does not use leave the order when it pushes."""
        cap = self._cap()
        plan = plan_round(round_, list(range(self.n_clients)), self.per_round, cap, self.seed)
        return Turns(plan, self.order, cap, self.server_batch, self.batch_wait_s)

    @property
    def plan(self) -> RoundPlan:
        return self.turns.plan

    @property
    def pos(self) -> int:
        return self.turns.pos

    @property
    def done_steps(self) -> Counter[int]:
        return self.turns.done

    def _check_client(self, cid: int) -> None:
        if not 0 <= cid < self.n_clients:
            raise Refused(f"unknown client id {cid} (this federation has {self.n_clients})")

    def _check_not_dropped(self, cid: int, round_: int) -> None:
        if round_ == self.round and cid in self.dropped:
            raise Refused(f"client {cid} was dropped from round {round_} ({self.dropped[cid]}); it rejoins at its "
                          f"next round")

    async def _wait(self, predicate) -> None:
        async with self.changed:
            await self.changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()
        if self.server_batch > 1:
            self._kick()

    def seen(self, cid: int) -> None:
        """Any frame from `cid` (a request or a heartbeat): it is alive."""
        if 0 <= cid < self.n_clients:
            self.last_seen[cid] = self.clock()

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
        elif cid in self.dropped:  # e.g. it slept past dead_after_s: back at its next round
            start = self.round + 1
        return {"round": self.round, "start": start, "rounds": self.rounds, "run": self.run_id,
                "server": self.server_id}

    async def _restarted(self, cid: int) -> int:
        """The round a restarted client joins at: the current one unless its old process took part in it."""
        began = cid in self.holds or self.trained[cid] or cid in self.pushed or cid in self.dropped
        if cid not in self.plan.clients or not began:
            self.log(f"client {cid} restarted; it joins round {self.round}")
            return self.round
        if cid not in self.pushed:
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
        await self._wait(lambda: self.round >= round_)
        if self.round > round_:
            raise Refused(f"stale round {round_}: the federation is at round {self.round}")
        if self.placement is None:
            if self.max_cut is not None and not 1 <= cut <= self.max_cut:
                raise Refused(f"cut {cut} outside [1, {self.max_cut}]: a client never gets adapters of the "
                              "server's blocks")
            return await self._hand_out(cid, round_, cut)
        self.placement.note(cid, report or {})
        if round_ < self.rounds and self.placement.decided < round_:
            self.pulled.add(cid)
            await self._maybe_decide()
            await self._wait(lambda: self.placement.decided >= round_ or self.round != round_)
        if cid in self.placement.refused:
            why = self.placement.refused[cid]
            self.finished_clients.add(cid)  # it has no place in this federation: the run does not wait for it
            await self.drop(cid, why)
            raise Refused(why)
        return await self._hand_out(cid, round_, self.placement.cut_of(cid))

    async def _hand_out(self, cid: int, round_: int, cut: int) -> Pulled:
        if round_ == self.round:
            self.holds[cid] = cut
        adapters = await self._compute(self.server.global_adapters, cut)
        return Pulled(cut, adapters, **(self.round_budget() if round_ < self.rounds else {}))

    async def _compute(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` (a call into `server`) in a worker thread, after the calls before it: the server's state
        is only ever touched by one call at a time, as when the calls ran inline, while the loop stays free. The
        lock is held until the thread is done, even if the awaiting request is cancelled meanwhile."""
        await self.torch.acquire()
        work = asyncio.get_running_loop().run_in_executor(_SERVER_THREAD, fn, *args)
        return await _to_the_end(work, self.torch)

    async def _maybe_decide(self) -> None:
        """Decide the current round's cuts once every selected client still in it has pulled."""
        p = self.placement
        if p is None or self.round >= self.rounds or p.decided >= self.round:
            return
        if set(self.plan.clients) - set(self.dropped) <= self.pulled:
            p.decide(self.round, list(range(self.n_clients)))
            await self._notify()

    async def step(self, req: ForwardRequest) -> StepReply:
        """Training steps run in the round's plan order; evaluation requests (train=False) run any time.

        A resent step (same (client, round, step) as that client's last applied one, e.g. after a reconnect)
        gets the cached reply and is not applied again; an older one is refused as a replay.
        """
        self._check_client(req.client_id)
        if not req.train:
            return await self._evaluate(req)
        key, turn = (req.client_id, req.round, req.step), (req.client_id, req.step)
        if (hit := self._cached(key)) is not None:
            self.log(f"client {req.client_id}: step {key[1:]} resent; answered from cache, not applied again")
            return hit
        self._check_not_dropped(req.client_id, req.round)
        if (why := self.turns.refusal(req.client_id, req.round, req.step)) is not None:
            raise Refused(why)
        if self.order == "arrival":  # served as it comes (a U-shaped step in flight holds the server)
            ready = self._idle
        else:
            ready = lambda: self.turns.is_next(*turn)  # noqa: E731
        if self.server_batch > 1:
            return await self._join(req, key)
        return await self._when(req, key, ready)

    # --- federation.server_batch > 1: several clients' steps, one server step -------------------------------

    async def _join(self, req: ForwardRequest, key: Key) -> StepReply:
        """Wait for the server step that takes this step with others (`_kick`), and its reply. A resend while the
        original waits shares its wait; a request cancelled while it waits leaves the batch; once its server step
        begins, the step runs to its end (a resend then gets the cached reply)."""
        if key in self.in_batch:  # a resend while its server step computes
            future = self.in_batch[key]
        elif key in self.joining:
            future = self.joining[key][1]
        else:
            future = asyncio.get_running_loop().create_future()
            self.joining[key] = (req, future)
            self.turns.arrive(key, self.clock())
            self._kick()
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if key in self.joining and self.joining[key][1] is future and not future.done():
                del self.joining[key]
                self.turns.withdraw(key)
            raise

    def _kick(self) -> None:
        """Start the next server step if none is running and one is ready (`Turns.ready`; called on every arrival
        and every change of the round: a push or a drop can complete or shorten the batch at the head of the
        plan)."""
        if self.in_batch or self.closing:
            return
        keys, retry_s = self.turns.ready(self.clock())
        if keys is None:
            if retry_s is not None:  # under arrival: the wait to fill the batch ends then
                asyncio.get_running_loop().call_later(retry_s, self._kick)
            return
        self.turns.take(keys)
        taken = [self.joining.pop(k) for k in keys]
        pairs = list(zip(keys, taken, strict=True))
        self.in_batch = {k: fut for k, (_, fut) in pairs}
        task = asyncio.ensure_future(self._run_batch([(k, req, fut) for k, (req, fut) in pairs]))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _run_batch(self, batch: list[tuple[Key, ForwardRequest, asyncio.Future]]) -> None:
        """One server step for `batch` (`SplitServer.step_batch`), its emulated rest, then each step applied and
        answered; a step refused (NaN/Inf) drops its client, the others go on."""
        try:
            start = time.perf_counter()
            reqs = [req for _, req, _ in batch]
            outs = await self._compute(self.server.step_batch, reqs)
            applied = [r for r, o in zip(reqs, outs, strict=True) if not isinstance(o, Exception)]
            if applied:
                self.server_steps += 1
                self.on_served(applied, time.perf_counter() - start)
            await self._paced([r.priced for r in reqs], start)
            for (key, req, future), out in zip(batch, outs, strict=True):
                try:
                    future.set_result(await self._joined(key, req, out))
                except Refused as e:
                    future.set_exception(e)
        except BaseException as e:  # the server failed: every waiting step is told, none hangs
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(e)
            raise
        finally:
            self.in_batch = {}
            self._kick()

    async def _joined(self, key: Key, req: ForwardRequest, out: StepReply | Exception) -> StepReply:
        if isinstance(out, NonFiniteStep):
            raise await self._not_applied(req, out, "loss or gradient")
        if isinstance(out, Exception):
            raise out
        self._check_still_in(req)
        await self._applied(key, out, req.activations.shape[0])
        return out

    def _leave(self, cid: int, why: str) -> None:
        """`cid` is out of the round's steps (`Turns.leave`): its turns leave the order, and its steps waiting to
        join a server step are refused."""
        for key in self.turns.leave(cid):
            _, future = self.joining.pop(key)
            if not future.done():
                future.set_exception(Refused(why))

    async def _when(self, req: ForwardRequest, key: tuple[int, int, int], ready: Callable[[], bool]) -> StepReply:
        """Apply step `key` once it may go (`ready`, or it was answered, dropped or its round ended meanwhile),
        checked again under `serving`: between the wake-up and the lock another step may have gone first. A
        request cancelled while it waits changes nothing; once its step begins, the step runs to its end."""
        while True:
            await self._wait(lambda: self._cached(key) is not None or self.round != req.round
                             or req.client_id in self.dropped or ready())
            await self.serving.acquire()
            handed = False
            try:
                if (hit := self._cached(key)) is not None:  # a resend that waited beside the original
                    return hit
                self._check_not_dropped(req.client_id, req.round)
                if self.round != req.round:
                    raise Refused(f"round {req.round} ended while step {req.step} of client {req.client_id} waited")
                if not ready():
                    continue
                applying, handed = _to_the_end(self._apply(req, key), self.serving), True
            finally:
                if not handed:
                    self.serving.release()
            return await applying

    async def _evaluate(self, req: ForwardRequest) -> StepReply:
        """An evaluation request, any time but under U not while a step is between its forward and its backward
        (the adapters must not move under it, see server.py): checked in the worker, where no step can begin."""
        while True:
            await self._wait(self._idle)
            reply = await self._compute(lambda: self.server.step(req) if self._idle() else None)
            if reply is not None:
                return reply

    def _idle(self) -> bool:
        """No U-shaped step is between its forward and its backward."""
        return getattr(self.server, "in_flight", None) is None

    def _cached(self, key: tuple[int, int, int]) -> StepReply | None:
        """The reply already given to step `key`: its last applied one, or its U-shaped forward in flight."""
        for cache in (self.cache, self.forwarded):
            hit = cache.get(key[0])
            if hit is not None and hit[0] == key:
                return hit[1]
        return None

    async def _apply(self, req: ForwardRequest, key: tuple[int, int, int]) -> StepReply:
        """Step `key` on the server (the caller holds `serving`), then its emulated rest."""
        start = time.perf_counter()
        try:
            reply = await self._compute(self.server.step, req)
        except NonFiniteStep as e:
            raise await self._not_applied(req, e, "loss or gradient") from None
        if self._gone_while_it_ran(req) and reply.hidden is not None:  # nothing to count
            self.server.abandon()
        self._check_still_in(req)
        self.server_steps += 1
        if reply.hidden is None:
            self.on_served([req], time.perf_counter() - start)
        if reply.hidden is not None:  # U-shaped: the step holds the server until its backward
            self.forwarded[req.client_id] = (key, reply)
            await self._paced([req.priced], start, "forward")
            return reply
        await self._paced([req.priced], start)
        await self._applied(key, reply, req.activations.shape[0])
        return reply

    async def _paced(self, shapes: list[tuple[int, int, int]], start: float, half: str = "step") -> None:
        """--emulate: the rest of the compute the server's profile asks for the (cut, batch, seq) steps begun at
        `start`, awaited: the server holds the step (`serving`), but the loop goes on receiving and timestamping
        requests and sending replies (a blocking sleep delayed them, and the clients counted it as link time)."""
        if self.pace is not None:
            await asyncio.sleep(self.pace(time.perf_counter() - start, shapes, half))

    def _gone_while_it_ran(self, req: ForwardRequest | BackwardRequest) -> bool:
        """The step's client was dropped, or its round aggregated without it, while the worker computed it."""
        return self.round != req.round or req.client_id in self.dropped

    def _check_still_in(self, req: ForwardRequest | BackwardRequest) -> None:
        """Refuse a step that is `_gone_while_it_ran` (nothing of it is counted)."""
        if self._gone_while_it_ran(req):
            raise Refused(f"client {req.client_id} was dropped from round {req.round} while step {req.step} ran")

    async def _not_applied(self, req: ForwardRequest | BackwardRequest, e: NonFiniteStep, what: str) -> Refused:
        """A step the server did not apply (a NaN/Inf `what`): its client leaves the round, or the others would
        wait for its turns; returns the refusal to raise."""
        await self.drop(req.client_id, f"step {req.step} had a NaN/Inf {what}")
        return Refused(str(e))

    async def _applied(self, key: tuple[int, int, int], reply: StepReply, rows: int) -> None:
        cid = key[0]
        self.cache[cid] = (key, reply)
        self.trained[cid] += rows
        self.train_tokens += reply.n_tokens
        self.turns.applied(cid)
        await self._notify()

    async def backward(self, req: BackwardRequest) -> StepReply:
        """The second half of a U-shaped step: only the step in flight, and only from the client that began it; a
        resent backward gets the cached reply."""
        self._check_client(req.client_id)
        key = (req.client_id, req.round, req.step)
        hit = self.cache.get(req.client_id)
        if hit is not None and hit[0] == key:
            self.log(f"client {req.client_id}: backward of step {key[1:]} resent; answered from cache")
            return hit[1]
        self._check_not_dropped(req.client_id, req.round)
        flying = getattr(self.server, "in_flight", None)
        if flying is None or flying[0] != key:
            raise Refused(f"backward of step (round {req.round}, step {req.step}) of client {req.client_id} has no "
                          "forward in flight")
        if tuple(req.grad_hidden.shape) != tuple(flying[2].shape):
            raise Refused(f"grad_hidden {tuple(req.grad_hidden.shape)} does not match the hidden states sent "
                          f"{tuple(flying[2].shape)}")
        self.forwarded.pop(req.client_id, None)  # the server's step in flight ends here, applied or not
        return await _to_the_end(self._apply_backward(req, key, flying[3]))

    async def _apply_backward(self, req: BackwardRequest, key: tuple[int, int, int], cut: int) -> StepReply:
        start = time.perf_counter()
        try:
            reply = await self._compute(self.server.backward, req)
        except NonFiniteStep as e:
            raise await self._not_applied(req, e, "gradient") from None
        self._check_still_in(req)
        await self._paced([(cut, *req.grad_hidden.shape[:2])], start, "backward")
        await self._applied(key, reply, req.grad_hidden.shape[0])
        return reply

    def _cap(self) -> int:
        return self.max_steps if self.budget == "time" else self.local_steps

    def round_budget(self) -> dict[str, Any]:
        """What a client's round runs to: local_steps, or (time budget) seconds and a cap on steps. The budget is
        federation.round_time_s, or `default_budget_s` of the seconds per step each of this round's clients
        reported last (its own compute and link, not its waits for other clients' turns, as the simulation prices
        it from the profile); a round before any report runs local_steps."""
        if self.budget != "time":
            return {}
        seconds = self.round_time_s or default_budget_s(self.step_s, self.plan.clients, self.local_steps)
        return {} if seconds is None else {"budget_s": seconds, "max_steps": self.max_steps}

    async def push_adapters(self, update: AdapterUpdate) -> None:
        """Take a client's adapters; a resent push of an accepted one is acknowledged and ignored."""
        self._check_client(update.client_id)
        cut = self.holds.get(update.client_id) if update.round == self.round else None
        # the shapes it must match, read in the worker first: the checks below and the taking then run with no
        # await between them, so a drop, a resend or the round's end cannot slip in
        want = {} if cut is None else await self._compute(self.server.global_adapters, cut)
        self._check_not_dropped(update.client_id, update.round)
        if update.round == self.round and update.client_id in self.pushed:
            self.log(f"client {update.client_id}: push of round {update.round} resent; ignored")
            return
        if update.round != self.round or update.client_id not in self.plan.clients:
            raise Refused(f"push for round {update.round} from client {update.client_id} is not expected now "
                          f"(federation at round {self.round})")
        due = 1 if self.budget == "time" and self.round_budget() else self.local_steps
        if self.local_steps and self.done_steps[update.client_id] < due:
            raise Refused(f"client {update.client_id} pushed round {update.round} before finishing its steps")
        self._check_push(update, cut, want)
        self.server.push_adapters(update)  # inline: it only queues the update for `aggregate`
        self.pushed.add(update.client_id)
        self._leave(update.client_id, f"client {update.client_id} pushed round {update.round}: its round's steps "
                                      "are over")  # the turns it left unused
        await self._notify()  # a step waiting behind those turns may go now
        self._note_pace(update.client_id, update.report)
        if self.placement is not None:
            self.placement.note(update.client_id, update.report)
        self._note_eval(update.client_id, update.report)
        await self._maybe_aggregate()

    def _check_push(self, update: AdapterUpdate, cut: int | None, want: dict[str, torch.Tensor]) -> None:
        """A client may overwrite only what it trained: exactly the adapters of the blocks it pulled this round
        (`want`: names, shapes and dtype of the global ones at its `cut`), finite, for no more samples than the
        server saw it train this round (without split steps: `samples_cap`)."""
        cid = update.client_id
        if cut is None:
            raise Refused(f"client {cid} pushed round {update.round} without pulling it")
        names, expected = set(update.adapters), set(want)
        if names != expected:
            odd = sorted(names - expected)[:3] or sorted(expected - names)[:3]
            raise Refused(f"client {cid} at cut {cut} must push the adapters of its blocks [0, {cut}) and nothing "
                          f"else; {'unexpected' if names - expected else 'missing'}: {', '.join(odd) or '(empty)'}")
        for name, t in update.adapters.items():
            if t.dtype != want[name].dtype or t.shape != want[name].shape or not torch.isfinite(t).all():
                raise Refused(f"client {cid}: adapter '{name}' must be a finite {want[name].dtype} tensor of shape "
                              f"{tuple(want[name].shape)}, got {t.dtype} {tuple(t.shape)}")
        cap = self.trained[cid] if self.local_steps else self.samples_cap
        if cap is not None and not 0 < update.n_samples <= cap:
            raise Refused(f"client {cid} claims {update.n_samples} samples for round {update.round}; the server saw "
                          f"it train {cap}")

    def _note_pace(self, cid: int, report: dict[str, Any]) -> None:
        """Seconds per training step the client reports (for the next time budget), if a sane number."""
        try:
            train_s, steps = float(report["train_s"]), int(report["steps"])
        except (TypeError, KeyError, ValueError):
            return
        if 0 < steps and 0 < train_s < 1e6:
            self.step_s[cid] = train_s / steps

    def _note_eval(self, cid: int, report: dict[str, Any]) -> None:
        """Keep a client's evaluation of a global model (ignored unless well-formed numbers of a known round)."""
        e: Any = report.get("eval")  # a client's JSON: checked below
        try:
            r, loss_sum, n_tok, n_ok = int(e["round"]), float(e["loss_sum"]), int(e["n_tokens"]), int(e["n_correct"])
        except (TypeError, KeyError, ValueError):
            return
        if -1 <= r < self.rounds and n_tok > 0 and 0 <= n_ok <= n_tok and loss_sum == loss_sum and loss_sum >= 0:
            cut = self.placement.cut_of(cid) if self.placement is not None else 0
            self.evals.setdefault(r, {})[cid] = (loss_sum, n_tok, n_ok, cut)

    async def _maybe_aggregate(self) -> None:
        if self.closing or self.round >= self.rounds or not self.pushed | set(self.dropped) >= set(self.plan.clients):
            return
        self.closing = True  # a drop or a push while the worker aggregates must not aggregate the round again
        await _to_the_end(self._close_round())  # the round ends whole even if the push that ended it is cancelled

    async def _close_round(self) -> None:
        try:
            merged = await self._compute(self.server.aggregate)
        finally:
            self.closing = False
        self.log(f"round {self.round}: aggregated clients {merged}"
                 + (f"; dropped {self.dropped}" if self.dropped else ""))
        self.on_eval(self.round - 1)  # the pushes of this round carried the evaluations of the previous model
        cuts = {str(c): self.placement.cut_of(c) for c in self.plan.clients} if self.placement else {}
        self.on_round({"round": self.round, "clients": merged, "cuts": cuts,
                       "dropped": {str(c): w for c, w in self.dropped.items()},
                       "steps_by_client": {str(c): self.done_steps[c] for c in self.plan.clients},
                       "train_tokens": self.train_tokens, "server_steps": self.server_steps})
        if self.placement is not None and self.round + 1 < self.rounds:
            self.placement.decide(self.round + 1, list(range(self.n_clients)))
        self.round, self.pushed, self.dropped, self.pulled = self.round + 1, set(), {}, set()
        self.holds, self.trained, self.train_tokens = {}, Counter(), 0
        self.turns, self.started, self.server_steps = self._turns(self.round), self.clock(), 0
        self.on_boundary()  # e.g. a checkpoint, before any client can see the new round
        await self._notify()
        await self.check(self.started)  # a client already gone is dropped from the new round at once

    def state_dict(self) -> dict[str, Any]:
        """At a round boundary: the round to run next, the run's id, the evaluations reported so far."""
        return {"round": self.round, "run": self.run_id, "step_s": {str(c): v for c, v in self.step_s.items()},
                "evals": {str(r): {str(c): list(v) for c, v in by.items()} for r, by in self.evals.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Stand at the start of `state`'s round, as when that round began (a resumed server)."""
        self.round, self.run_id = int(state["round"]), str(state["run"])
        self.evals = {int(r): {int(c): tuple(v) for c, v in by.items()} for r, by in state["evals"].items()}
        self.pushed, self.dropped, self.pulled, self.holds, self.trained = set(), {}, set(), {}, Counter()
        self.train_tokens, self.server_steps = 0, 0
        self.step_s = {int(c): float(v) for c, v in state.get("step_s", {}).items()}
        self.turns, self.started = self._turns(self.round), self.clock()

    async def drop(self, cid: int, why: str) -> None:
        """Take `cid` out of the current round: its remaining steps leave the order, its waiting requests are
        refused, and the round aggregates over the others once they have pushed."""
        if self.round >= self.rounds or cid not in self.plan.clients or cid in self.pushed or cid in self.dropped:
            return
        self.dropped[cid] = why
        self.log(f"round {self.round}: dropped client {cid}: {why}")
        self._leave(cid, f"client {cid} was dropped from round {self.round} ({why}); it rejoins at its next round")
        if self.forwarded.pop(cid, None) is not None:  # its U-shaped step will not finish: nothing was applied
            self.server.abandon()  # inline: with a forward in flight no other step can be in the worker
        await self._notify()
        await self._maybe_decide()
        await self._maybe_aggregate()

    async def check(self, now: float) -> None:
        """Drop the silent and the late; finish once the last round is aggregated and every client is done or
        gone. Silence counts only for a client that has connected (a fresh one may still be loading its model);
        one that never connects is late at the round deadline."""
        round_ = self.round
        for cid in self.plan.clients if round_ < self.rounds else []:
            if self.round != round_:  # a drop completed the round
                break
            if self._silent(cid, now):
                await self.drop(cid, f"silent for {now - self.last_seen[cid]:.0f} s "
                                     f"(transport.dead_after_s={self.dead_after_s:g})")
            elif now - self.started > self.round_timeout_s:
                await self.drop(cid, f"not done {now - self.started:.0f} s into the round "
                                     f"(transport.round_timeout_s={self.round_timeout_s:g})")
        gone = {c for c in range(self.n_clients)
                if self._silent(c, now) or (c not in self.last_seen and now - self.t0 > self.round_timeout_s)}
        everyone = set(range(self.n_clients))
        if self.round >= self.rounds and self.finished_clients | gone >= everyone and not self.finished.is_set():
            if gone - self.finished_clients:
                self.log(f"finishing without clients {sorted(gone - self.finished_clients)} "
                         "(silent or never connected)")
            self.finished.set()

    def _silent(self, cid: int, now: float) -> bool:
        return cid in self.last_seen and now - self.last_seen[cid] > self.dead_after_s

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


def _to_the_end(work: Awaitable[Any], lock: asyncio.Lock | None = None) -> Awaitable[Any]:
    """`work` as a task that runs to its end, releasing `lock` (held by the caller) when it ends, behind a shield:
    a request cancelled meanwhile (its client disconnected) leaves the state change it began whole, never half
    done (a step applied but not counted, a thread still in `server` with the lock let go)."""
    task = asyncio.ensure_future(work)

    def ended(t: asyncio.Future) -> None:
        if lock is not None:
            lock.release()
        if not t.cancelled():
            t.exception()  # retrieved: a failure nobody awaited any more is not reported as never retrieved

    task.add_done_callback(ended)
    return asyncio.shield(task)

