"""The synchronous state of a deployed round, apart from the network and the event loop: who was selected, who
pulled, pushed or was dropped, what the server saw each client train, whether a push may be taken, the round's
record; who is silent or late; what a client's report says (its pace, its evaluation).

No asyncio and no clock of its own: the coordinator (`coordinator.py`, the asyncio shell) asks and acts, passing
the time where it matters, and the tests drive it with plain calls:

    state = RoundState(plan_round(0, [0, 1, 2], 0, 2, seed), Schedule(), cap=2, started=now)
    state.refusal(cid, round_, step)                       # None, or why a training request is refused now
    state.applied(cid, rows, tokens)                       # a step of cid was applied: its turn is done
    state.take_push(update, cut, want, due, cap)           # True: taken; False: a resend; or raises Refused
    state.record(merged, cuts)                             # the round's `round` record, once `complete`
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from ..schedule import RoundPlan, Schedule
from ..transport.base import AdapterUpdate
from .turns import Key, Turns


class Refused(ValueError):
    """A request that is well-formed but not acceptable now (replay, unknown client, stale round, dropped)."""


class RoundState:
    """One round as the server sees it.

    Attributes:
        turns: its training steps as admitted and served (`turns.Turns`; `turns.plan`: clients and order).
        started: when it began (the server's clock), for its deadline.
        pulled: the selected clients that pulled it (its cuts are decided once every one still in it has).
        holds: client -> the cut it pulled (what it may push).
        trained: client -> samples of its training steps applied; train_tokens: their label tokens.
        server_steps: server steps run (fewer than the training steps when several are joined into one).
        pushed, dropped: the clients done with it; dropped: client -> why.
    """

    def __init__(self, plan: RoundPlan, schedule: Schedule, cap: int, started: float):
        self.turns = Turns(plan, schedule.order, cap, schedule.server_batch, schedule.batch_wait_s)
        self.started = started
        self.pulled: set[int] = set()
        self.holds: dict[int, int] = {}
        self.trained: Counter[int] = Counter()
        self.train_tokens = 0
        self.server_steps = 0
        self.pushed: set[int] = set()
        self.dropped: dict[int, str] = {}

    @property
    def plan(self) -> RoundPlan:
        return self.turns.plan

    @property
    def number(self) -> int:
        return self.turns.plan.round

    @property
    def complete(self) -> bool:
        """Every selected client has pushed or was dropped: the round can be aggregated."""
        return self.pushed | set(self.dropped) >= set(self.plan.clients)

    def expects(self, cid: int) -> bool:
        """`cid` was selected and is not done with the round (it can still be dropped from it)."""
        return cid in self.plan.clients and cid not in self.pushed and cid not in self.dropped

    def began(self, cid: int) -> bool:
        """`cid` took part in the round already (pulled it, trained, pushed, or was dropped from it)."""
        return cid in self.holds or self.trained[cid] > 0 or cid in self.pushed or cid in self.dropped

    def _dropped(self, cid: int, round_: int) -> str | None:
        """Why `cid` is out of `round_` (this round; it rejoins at its next one), or None."""
        if round_ == self.number and cid in self.dropped:
            return f"client {cid} was dropped from round {round_} ({self.dropped[cid]}); it rejoins at its next round"
        return None

    def not_dropped(self, cid: int, round_: int) -> None:
        """Raise Refused if `cid` was dropped from `round_` (this round)."""
        if (why := self._dropped(cid, round_)) is not None:
            raise Refused(why)

    def refusal(self, cid: int, round_: int, step: int) -> str | None:
        """Why a training request of `cid` cannot be admitted now (None: it can)."""
        return self._dropped(cid, round_) or self.turns.refusal(cid, round_, step)

    def gone(self, cid: int, round_: int) -> bool:
        """A step of `cid` in `round_` no longer counts: its client was dropped, or the round ended."""
        return round_ != self.number or cid in self.dropped

    def applied(self, cid: int, rows: int, tokens: int) -> None:
        """A training step of `cid` (`rows` samples, `tokens` label tokens) was applied: its turn is done."""
        self.trained[cid] += rows
        self.train_tokens += tokens
        self.turns.applied(cid)

    def drop(self, cid: int, why: str) -> list[Key]:
        """Take `cid` out of the round: its turns leave the order; returns its steps that were waiting to join a
        server step, now refused."""
        self.dropped[cid] = why
        return self.turns.leave(cid)

    def take_push(self, update: AdapterUpdate, cut: int | None, want: dict[str, torch.Tensor], due: int,
                  cap: int | None) -> bool:
        """Take a client's adapters into the round, or say why not: True when taken (its unused turns leave the
        order: `turns.leave`), False for a resend of a push already taken; raises Refused otherwise. `cut`: the
        cut it pulled this round, `want`: the global adapters at that cut (names, shapes, dtype it must match),
        `due`: the steps it must have run, `cap`: the most samples it may claim (None: unchecked)."""
        cid = update.client_id
        self.not_dropped(cid, update.round)
        if update.round == self.number and cid in self.pushed:
            return False
        if update.round != self.number or cid not in self.plan.clients:
            raise Refused(f"push for round {update.round} from client {cid} is not expected now "
                          f"(federation at round {self.number})")
        if due and self.turns.done[cid] < due:
            raise Refused(f"client {cid} pushed round {update.round} before finishing its steps")
        check_push(update, cut, want, cap)
        self.pushed.add(cid)
        return True

    def record(self, merged: list[int], cuts: dict[str, int]) -> dict[str, Any]:
        """The round's `round` record, once aggregated over `merged` with the clients' `cuts`."""
        return {"round": self.number, "clients": merged, "cuts": cuts,
                "dropped": {str(c): w for c, w in self.dropped.items()},
                "steps_by_client": {str(c): self.turns.done[c] for c in self.plan.clients},
                "train_tokens": self.train_tokens, "server_steps": self.server_steps}


def check_push(update: AdapterUpdate, cut: int | None, want: dict[str, torch.Tensor], cap: int | None) -> None:
    """A client may overwrite only what it trained: exactly the adapters of the blocks it pulled this round
    (`want`: names, shapes and dtype of the global ones at its `cut`), finite, for no more samples than `cap`
    (what the server saw it train this round; without split steps: a round's worth)."""
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
    if cap is not None and not 0 < update.n_samples <= cap:
        raise Refused(f"client {cid} claims {update.n_samples} samples for round {update.round}; the server saw "
                      f"it train {cap}")


@dataclass
class Liveness:
    """Who is alive: a client is silent once no frame of it came for `dead_after_s`, late once its round has run
    `round_timeout_s`. Silence counts only for a client that has connected (a fresh one may still be loading its
    model); one that never connects is late at the round deadline."""

    dead_after_s: float
    round_timeout_s: float
    t0: float  # when the server began
    last_seen: dict[int, float] = field(default_factory=dict)

    def seen(self, cid: int, now: float) -> None:
        self.last_seen[cid] = now

    def silent(self, cid: int, now: float) -> bool:
        return cid in self.last_seen and now - self.last_seen[cid] > self.dead_after_s

    def why_drop(self, cid: int, now: float, started: float) -> str | None:
        """Why a client in a round begun at `started` is dropped now (None: it is not)."""
        if self.silent(cid, now):
            return f"silent for {now - self.last_seen[cid]:.0f} s (server.dead_after_s={self.dead_after_s:g})"
        if now - started > self.round_timeout_s:
            return f"not done {now - started:.0f} s into the round (server.round_timeout_s={self.round_timeout_s:g})"
        return None

    def gone(self, clients: range, now: float) -> set[int]:
        """The clients the run no longer waits for at its end: silent, or never connected by the deadline."""
        return {c for c in clients
                if self.silent(c, now) or (c not in self.last_seen and now - self.t0 > self.round_timeout_s)}


def pace_of(report: dict[str, Any]) -> float | None:
    """Seconds per training step a client's report says (for the next time budget), if a sane number."""
    try:
        train_s, steps = float(report["train_s"]), int(report["steps"])
    except (TypeError, KeyError, ValueError):
        return None
    return train_s / steps if 0 < steps and 0 < train_s < 1e6 else None


def eval_of(report: dict[str, Any], rounds: int) -> tuple[int, float, int, int] | None:
    """(round, loss_sum, n_tokens, n_correct) of a client's evaluation of a global model, if well-formed numbers of
    a known round (round -1: the model before training)."""
    e: Any = report.get("eval")  # a client's JSON: checked below
    try:
        r, loss_sum, n_tok, n_ok = int(e["round"]), float(e["loss_sum"]), int(e["n_tokens"]), int(e["n_correct"])
    except (TypeError, KeyError, ValueError):
        return None
    if -1 <= r < rounds and n_tok > 0 and 0 <= n_ok <= n_tok and loss_sum == loss_sum and loss_sum >= 0:
        return r, loss_sum, n_tok, n_ok
    return None
