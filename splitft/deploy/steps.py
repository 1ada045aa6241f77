"""The server's training and evaluation steps in a deployment, on the event loop: each training step in its turn
(plan order) or as it comes (arrival), alone or joined with others into one server step
(`federation.server_batch`), the U-shaped step's two halves, the resend cache, the emulated server time.

Which steps are admitted and which are ready is the round's synchronous state (`rounds.RoundState`, its
`turns.Turns`); this is the asyncio part: the waits, the calls into the server in the worker thread
(`worker.Worker`), the replies. The coordinator owns the round and passes itself (`Rounds`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..fedavg import FedAvgServer
from ..optim import NonFiniteStep
from ..schedule import Schedule
from ..transport.base import BackwardRequest, ForwardRequest, StepReply
from .rounds import Refused, RoundState
from .turns import Key
from .worker import Worker, to_the_end


class Rounds(Protocol):
    """What the steps need of the coordinator: the round, whether it is being aggregated, and dropping a client."""

    current: RoundState
    closing: bool

    async def drop(self, cid: int, why: str) -> None: ...


class Steps:
    """The steps of the coordinator's `rounds`, served on `server` through `worker`.

    Attributes:
        cache: client -> (key, reply) of its last applied step (a resend gets the reply, not a second update).
        forwarded: under U, client -> (key, reply) of its forward in flight (the server holds it to its backward).
        joining: server_batch > 1: the steps waiting to join a server step (`Turns.waiting`): their request and
            their reply's future; in_batch: the futures of the server step computing.
        serving: held by one training step at a time, its emulated time included.
    """

    def __init__(self, server: FedAvgServer, worker: Worker, rounds: Rounds, schedule: Schedule,
                 log: Callable[[str], Any], clock: Callable[[], float],
                 pace: Callable[[float, list[tuple[int, int, int]], str], float] | None = None,
                 on_served: Callable[[list[ForwardRequest], float], Any] | None = None):
        self.server, self.worker, self.rounds, self.schedule = server, worker, rounds, schedule
        self.log, self.clock = log, clock
        self.pace = pace  # --emulate: (real seconds, [(cut, batch, seq)] of a server step, half) -> seconds it
        # must still take (`ServerPacer.rest`; half: "step", or under U "forward" / "backward")
        self.on_served = on_served or (lambda reqs, seconds: None)  # a vanilla server step: its requests, seconds
        self.cache: dict[int, tuple[Key, StepReply]] = {}
        self.forwarded: dict[int, tuple[Key, StepReply]] = {}
        self.joining: dict[Key, tuple[ForwardRequest, asyncio.Future]] = {}
        self.in_batch: dict[Key, asyncio.Future] = {}
        self.serving = asyncio.Lock()
        if schedule.server_batch > 1:
            worker.on_change.append(self.kick)  # a push or a drop can complete or shorten the batch at the head

    def abandon(self, cid: int) -> None:
        """`cid` left its round: its U-shaped step in flight, if any, will not finish (nothing was applied)."""
        if self.forwarded.pop(cid, None) is not None:
            self.server.abandon()  # inline: with a forward in flight no other step can be in the worker

    async def step(self, req: ForwardRequest) -> StepReply:
        """Training steps run in the round's plan order; evaluation requests (train=False) run any time.

        A resent step (same (client, round, step) as that client's last applied one, e.g. after a reconnect)
        gets the cached reply and is not applied again; an older one is refused as a replay.
        """
        if not req.train:
            return await self._evaluate(req)
        key, turn = (req.client_id, req.round, req.step), (req.client_id, req.step)
        if (hit := self._cached(key)) is not None:
            self.log(f"client {req.client_id}: step {key[1:]} resent; answered from cache, not applied again")
            return hit
        if (why := self.rounds.current.refusal(req.client_id, req.round, req.step)) is not None:
            raise Refused(why)
        if self.schedule.order == "arrival":  # served as it comes (a U-shaped step in flight holds the server)
            ready = self._idle
        else:
            ready = lambda: self.rounds.current.turns.is_next(*turn)  # noqa: E731
        if self.schedule.server_batch > 1:
            return await self._join(req, key)
        return await self._when(req, key, ready)

    # --- federation.server_batch > 1: several clients' steps, one server step -------------------------------

    async def _join(self, req: ForwardRequest, key: Key) -> StepReply:
        """Wait for the server step that takes this step with others (`kick`), and its reply. A resend while the
        original waits shares its wait; a request cancelled while it waits leaves the batch; once its server step
        begins, the step runs to its end (a resend then gets the cached reply)."""
        if key in self.in_batch:  # a resend while its server step computes
            future = self.in_batch[key]
        elif key in self.joining:
            future = self.joining[key][1]
        else:
            future = asyncio.get_running_loop().create_future()
            self.joining[key] = (req, future)
            self.rounds.current.turns.arrive(key, self.clock())
            self.kick()
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if key in self.joining and self.joining[key][1] is future and not future.done():
                del self.joining[key]
                self.rounds.current.turns.withdraw(key)
            raise

    def kick(self) -> None:
        """Start the next server step if none is running and one is ready (`Turns.ready`; called on every arrival
        and every change of the round: a push or a drop can complete or shorten the batch at the head of the
        plan)."""
        if self.in_batch or self.rounds.closing:
            return
        keys, retry_s = self.rounds.current.turns.ready(self.clock())
        if keys is None:
            if retry_s is not None:  # under arrival: the wait to fill the batch ends then
                asyncio.get_running_loop().call_later(retry_s, self.kick)
            return
        self.rounds.current.turns.take(keys)
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
            outs = await self.worker.compute(self.server.step_batch, reqs)
            applied = [r for r, o in zip(reqs, outs, strict=True) if not isinstance(o, Exception)]
            if applied:
                self.rounds.current.server_steps += 1
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
            self.kick()

    async def _joined(self, key: Key, req: ForwardRequest, out: StepReply | Exception) -> StepReply:
        if isinstance(out, NonFiniteStep):
            raise await self._not_applied(req, out, "loss or gradient")
        if isinstance(out, Exception):
            raise out
        self._check_still_in(req)
        await self._applied(key, out, req.activations.shape[0])
        return out

    def refuse_waiting(self, keys: list[Key], why: str) -> None:
        """Refuse the steps that were waiting to join a server step (their client left the round's steps)."""
        for key in keys:
            _, future = self.joining.pop(key)
            if not future.done():
                future.set_exception(Refused(why))

    async def _when(self, req: ForwardRequest, key: tuple[int, int, int], ready: Callable[[], bool]) -> StepReply:
        """Apply step `key` once it may go (`ready`, or it was answered, dropped or its round ended meanwhile),
        checked again under `serving`: between the wake-up and the lock another step may have gone first. A
        request cancelled while it waits changes nothing; once its step begins, the step runs to its end."""
        while True:
            await self.worker.wait(lambda: self._cached(key) is not None
                                   or self.rounds.current.gone(req.client_id, req.round) or ready())
            await self.serving.acquire()
            handed = False
            try:
                if (hit := self._cached(key)) is not None:  # a resend that waited beside the original
                    return hit
                self.rounds.current.not_dropped(req.client_id, req.round)
                if self.rounds.current.number != req.round:
                    raise Refused(f"round {req.round} ended while step {req.step} of client {req.client_id} waited")
                if not ready():
                    continue
                applying, handed = to_the_end(self._apply(req, key), self.serving), True
            finally:
                if not handed:
                    self.serving.release()
            return await applying

    async def _evaluate(self, req: ForwardRequest) -> StepReply:
        """An evaluation request, any time but under U not while a step is between its forward and its backward
        (the adapters must not move under it, see server.py): checked in the worker, where no step can begin."""
        while True:
            await self.worker.wait(self._idle)
            reply = await self.worker.compute(lambda: self.server.step(req) if self._idle() else None)
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
            reply = await self.worker.compute(self.server.step, req)
        except NonFiniteStep as e:
            raise await self._not_applied(req, e, "loss or gradient") from None
        if self.rounds.current.gone(req.client_id, req.round) and reply.hidden is not None:  # nothing to count
            self.server.abandon()
        self._check_still_in(req)
        self.rounds.current.server_steps += 1
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

    def _check_still_in(self, req: ForwardRequest | BackwardRequest) -> None:
        """Refuse a step whose client was dropped, or whose round aggregated without it, while the worker computed
        it (nothing of it is counted)."""
        if self.rounds.current.gone(req.client_id, req.round):
            raise Refused(f"client {req.client_id} was dropped from round {req.round} while step {req.step} ran")

    async def _not_applied(self, req: ForwardRequest | BackwardRequest, e: NonFiniteStep, what: str) -> Refused:
        """A step the server did not apply (a NaN/Inf `what`): its client leaves the round, or the others would
        wait for its turns; returns the refusal to raise."""
        await self.rounds.drop(req.client_id, f"step {req.step} had a NaN/Inf {what}")
        return Refused(str(e))

    async def _applied(self, key: tuple[int, int, int], reply: StepReply, rows: int) -> None:
        self.cache[key[0]] = (key, reply)
        self.rounds.current.applied(key[0], rows, reply.n_tokens)
        await self.worker.notify()

    async def backward(self, req: BackwardRequest) -> StepReply:
        """The second half of a U-shaped step: only the step in flight, and only from the client that began it; a
        resent backward gets the cached reply."""
        key = (req.client_id, req.round, req.step)
        hit = self.cache.get(req.client_id)
        if hit is not None and hit[0] == key:
            self.log(f"client {req.client_id}: backward of step {key[1:]} resent; answered from cache")
            return hit[1]
        self.rounds.current.not_dropped(req.client_id, req.round)
        flying = getattr(self.server, "in_flight", None)
        if flying is None or flying[0] != key:
            raise Refused(f"backward of step (round {req.round}, step {req.step}) of client {req.client_id} has no "
                          "forward in flight")
        if tuple(req.grad_hidden.shape) != tuple(flying[2].shape):
            raise Refused(f"grad_hidden {tuple(req.grad_hidden.shape)} does not match the hidden states sent "
                          f"{tuple(flying[2].shape)}")
        self.forwarded.pop(req.client_id, None)  # the server's step in flight ends here, applied or not
        return await to_the_end(self._apply_backward(req, key, flying[3]))

    async def _apply_backward(self, req: BackwardRequest, key: tuple[int, int, int], cut: int) -> StepReply:
        start = time.perf_counter()
        try:
            reply = await self.worker.compute(self.server.backward, req)
        except NonFiniteStep as e:
            raise await self._not_applied(req, e, "gradient") from None
        self._check_still_in(req)
        await self._paced([(cut, *req.grad_hidden.shape[:2])], start, "backward")
        await self._applied(key, reply, req.grad_hidden.shape[0])
        return reply
