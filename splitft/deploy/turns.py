"""The synchronous core of a deployed round's training steps: which requests are admitted, which steps are ready to
run (one, or several joined into one server step), and the round's turns as steps are applied and clients leave.

No asyncio, no torch, no clock of its own: the coordinator (the asyncio shell around it) asks and acts, passing the
time where it matters; the tests drive it with plain calls. The same rules as the simulation: `plan_round`'s
seeded turns, `next_batch` for joined steps under plan order.

    turns = Turns(plan_round(0, [0, 1, 2], 0, 2, seed), order="plan", cap=2, server_batch=2)
    turns.refusal(cid, round_, step)      # None, or why the request is refused
    turns.arrive((cid, round_, step), t)  # a joined step waits
    turns.ready(now)                      # ([keys of the next server step], None) or (None, seconds to wait)
"""

from __future__ import annotations

from collections import Counter

from ..schedule import RoundPlan, next_batch

Key = tuple[int, int, int]
"""(client, round, step): one training step."""


class Turns:
    """One round's training steps as the server admits and serves them.

    Attributes:
        plan: the round's clients and turns (`plan.order`: (client, step), the turns left to serve at `pos` on).
        order: "plan" (each step in its turn) | "arrival" (each client's next step, as it comes).
        cap: the most steps a client may run this round (local_steps, or the time budget's cap).
        done: client -> training steps applied this round.
        waiting: the steps waiting to join a server step (`server_batch` > 1): key -> when it arrived, in arrival
            order.
    """

    def __init__(self, plan: RoundPlan, order: str, cap: int, server_batch: int = 1, batch_wait_s: float = 0.0):
        self.plan, self.order, self.cap = plan, order, cap
        self.server_batch, self.batch_wait_s = server_batch, batch_wait_s
        self.pos = 0
        self.done: Counter[int] = Counter()
        self.waiting: dict[Key, float] = {}

    def refusal(self, cid: int, round_: int, step: int) -> str | None:
        """Why a training request of `cid` cannot be admitted now (None: it can): under arrival only the
        client's own next step within the cap, under plan only a turn still ahead in the order."""
        if self.order == "arrival":
            if round_ != self.plan.round or cid not in self.plan.clients or step != self.done[cid] or step >= self.cap:
                return (f"step (round {round_}, step {step}) of client {cid} is a replay or not expected "
                        f"(federation at round {self.plan.round})")
        elif round_ != self.plan.round or (cid, step) not in self.plan.order[self.pos:]:
            return (f"step (round {round_}, step {step}) of client {cid} is a replay or not in this round's plan "
                    f"(federation at round {self.plan.round})")
        return None

    def is_next(self, cid: int, step: int) -> bool:
        """One step per server step: whether (cid, step) may run now (under plan: it is the next turn)."""
        return self.order == "arrival" or self.plan.order[self.pos] == (cid, step)

    def arrive(self, key: Key, now: float) -> None:
        """A joined step's request is here (a resend keeps the first arrival's time)."""
        self.waiting.setdefault(key, now)

    def withdraw(self, key: Key) -> None:
        """Its request went away before its server step began (its client disconnected)."""
        self.waiting.pop(key, None)

    def ready(self, now: float) -> tuple[list[Key] | None, float | None]:
        """The steps the next server step takes, or why not yet: (keys, None), or (None, seconds after which to
        ask again; None: when something changes). Under plan the next turns of the order (`next_batch`), once all
        are here; under arrival those waiting, once server_batch of them are or batch_wait_s after the first."""
        if self.order == "plan":
            keys = [(c, self.plan.round, s) for c, s in next_batch(self.plan.order[self.pos:], self.server_batch)]
            return (keys, None) if keys and all(k in self.waiting for k in keys) else (None, None)
        keys = list(self.waiting)[:self.server_batch]
        if not keys:
            return None, None
        waited = now - self.waiting[keys[0]]
        if len(keys) < self.server_batch and waited < self.batch_wait_s:
            return None, self.batch_wait_s - waited
        return keys, None

    def take(self, keys: list[Key]) -> None:
        """A server step begins with these steps: they wait no more."""
        for k in keys:
            del self.waiting[k]

    def applied(self, cid: int) -> None:
        """One step of `cid` was applied: its turn is done."""
        self.done[cid] += 1
        self.pos += 1

    def leave(self, cid: int) -> list[Key]:
        """`cid` is out of the round's steps (it pushed, or was dropped): its turns still ahead leave the order
        (the steps behind them need not wait for them); returns its steps that were waiting, now refused."""
        self.plan.order = self.plan.order[:self.pos] + [t for t in self.plan.order[self.pos:] if t[0] != cid]
        gone = [k for k in self.waiting if k[0] == cid]
        for k in gone:
            del self.waiting[k]
        return gone
