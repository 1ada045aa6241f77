"""The in-process runtime: one federated round end to end (select clients, sync adapters, interleave steps,
FedAvg, evaluate, re-cut) over clients and a server in this process, timed by the virtual clock. What it shares
with the deployment (the plan, budgets, dropouts) is in `schedule.py`.

The server serves a round's training steps in one of two orders (`Schedule.order`): `plan`, round-robin over
the selected clients in a seeded permutation, so the shared server model sees the clients interleaved (c2, c0,
c1, c2, c0, c1, ...) and the same seed gives the same order; or `arrival`, first come first served, where the
simulation runs the steps in the order the virtual clock says they would reach the server. A round ends after
`local_steps` steps per client, or (`Schedule.budget="time"`) when the round's time budget has passed, each
client having run as many steps as fit (at most `max_steps_factor` x local_steps). The budget is priced as the
deployed server prices it: round_time_s, or the median client's local_steps x its own seconds per step in its
last round (compute and link, from the clock); a round before any step runs local_steps. After aggregation a cut
policy (if any) decides the next round's cuts from each client's profile and last-round loss; `recut` applies
the decision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..client import LocalClient, SplitClient
from ..data.datasets import Example
from ..fedavg import FedAvgServer
from ..lora import load_adapter_state_dict
from ..metrics import MetricsLogger, perplexity
from ..policy import ClientStats, CutBounds, CutPolicy, floor_record
from ..policy.codecs import CodecChoice
from ..schedule import RoundPlan, Schedule, another_step, default_budget_s, next_batch, plan_dropouts, plan_round
from ..seeding import global_rng_state, load_global_rng_state
from ..transport.base import STEP_DOWN, STEP_UP, ForwardRequest, sum_kinds, training_traffic
from .clock import RoundClock


@dataclass
class Adaptivity:
    """What re-cutting needs: the policy, each client's static stats, and the mechanism that applies a cut."""

    policy: CutPolicy
    stats: dict[int, ClientStats]
    recut: Callable[[int, int], None]
    recode: Callable[[int, str], None] = lambda cid, codec: None
    """codec.up=auto: gives a client the codec the policy chose (`Decision.codecs`)."""
    bounds: CutBounds | None = None
    """The policy's bounds, for the record of which cuts sit at the privacy floor (`CutBounds.at_floor`)."""


class Federation:
    """Drives rounds over clients that share one transport to one server (in-process or remote)."""

    def __init__(self, server: FedAvgServer, clients: dict[int, SplitClient | LocalClient], transport: Any, *,
                 eval_examples: list[Example], batch_size: int, pad_id: int, local_steps: int,
                 clients_per_round: int, seed: int, logger: MetricsLogger,
                 on_step: Callable[[dict[str, Any]], None] | None = None, clock: RoundClock | None = None,
                 adaptivity: Adaptivity | None = None, dropout: float = 0.0, schedule: Schedule | None = None):
        self.server, self.clients, self.transport = server, clients, transport
        self.schedule = schedule = schedule or Schedule()
        assert schedule.planned or clock is not None, "arrival order and time budgets need a clock"
        self.eval_examples, self.batch_size, self.pad_id = eval_examples, batch_size, pad_id
        self.local_steps, self.per_round, self.seed = local_steps, clients_per_round, seed
        self.logger, self.clock, self.adaptivity, self.dropout = logger, clock, adaptivity, dropout
        self.on_step = on_step or (lambda record: None)
        self.on_phase: Callable[[str, int], None] = lambda phase, round_: None
        """Told "evaluate" before and "train" after each evaluation (progress output keeps the two apart)."""
        self.virtual_time = 0.0
        self.codecs: dict[int, str] = {}
        """codec.up=auto: each client's codec up as the policy last chose it."""
        self.step_s: dict[int, float] = {}
        """Per client, its own seconds per step in its last round (`RoundClock.own_s`): what a deployed client
        reports with its push, and what the next time budget is set from."""

    def state_dict(self) -> dict[str, Any]:
        """Everything the next round depends on, taken at a round boundary (aggregated, evaluated, next cuts
        applied): the server's, each client's and the byte counter's own state, the virtual time, and the global
        generators (model code and dropout draw from them). Resuming from it ends bit-identical."""
        return {"virtual_time": self.virtual_time, "step_s": {str(c): v for c, v in self.step_s.items()},
                "server": self.server.state_dict(),
                "clients": {str(c): client.state_dict() for c, client in self.clients.items()},
                "bytes": self.transport.counter.state_dict(), "rng": global_rng_state(),
                "codecs": {str(c): v for c, v in self.codecs.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put a freshly built federation (same config) into the saved state; clients saved at another cut are
        re-cut first (only the federation can build a part)."""
        self.server.load_state_dict(state["server"])
        for cid, client in self.clients.items():
            saved = state["clients"][str(cid)]
            if saved["cut"] != client.cut:
                assert self.adaptivity is not None, "only adaptive runs change cuts"
                self.adaptivity.recut(cid, saved["cut"])
            client.load_state_dict(saved)
        self.virtual_time = state["virtual_time"]
        self._recode({int(c): str(v) for c, v in state.get("codecs", {}).items()})
        self.step_s = {int(c): float(v) for c, v in state.get("step_s", {}).items()}
        self.transport.counter.load_state_dict(state["bytes"])
        load_global_rng_state(state["rng"])

    def run_round(self, round_: int, evaluate: bool) -> dict[str, Any]:
        plan = plan_round(round_, sorted(self.clients), self.per_round, self.local_steps, self.seed)
        gone = plan_dropouts(round_, plan.clients, self.local_steps, self.dropout, self.seed)
        before = self.transport.counter.snapshot()
        cuts = {str(c): self.clients[c].cut for c in plan.clients}
        for cid in plan.clients:
            self.clients[cid].pull(self.transport, round_)
        line: Any = None  # the scheduled round's timeline: its clock, waits included
        if self.schedule.planned:
            steps = self._planned(round_, [(c, s) for c, s in plan.order if s < gone.get(c, self.local_steps)])
        else:
            pulled = self.transport.counter.since(before, plan.clients)
            steps, line = self._scheduled(round_, plan, gone, {c: d["lora_down"] for c, d in pulled.items()})
        self._note_pace([s for s in steps if s["client_id"] not in gone])  # a vanished client reports nothing
        for cid in plan.clients:
            if cid in gone:  # vanished mid-round: nothing delivered, its partial steps weigh nothing
                self.clients[cid].samples_seen = 0
            else:
                self.clients[cid].push(self.transport, round_)
        merged = self.server.aggregate()
        delta = self.transport.counter.since(before, plan.clients)
        record: dict[str, Any] = {
            "round": round_, "clients": merged, "cuts": cuts,
            "train_loss": sum(s["loss"] for s in steps) / len(steps) if steps else None,
            "lr": next(iter(self.clients.values())).schedule.round_lr(round_),  # train.schedule
            "client_loss": {str(c): self._client_loss(c, steps) for c in plan.clients},
            "steps_by_client": {str(c): sum(s["client_id"] == c for s in steps) for c in plan.clients},
            "train_tokens": sum(s["n_tokens"] for s in steps),
        }
        if self.schedule.server_batch > 1:  # joined: fewer server steps than steps
            record["server_steps"] = len({s.get("server_step", i) for i, s in enumerate(steps)})
        if self.dropout > 0:
            record["dropped"] = {str(c): s for c, s in gone.items()}  # client -> the step it vanished at
        record.update(self._time_and_bytes(steps, delta, line))
        if evaluate:
            record.update(self.evaluate(round_))
        if self.adaptivity is not None:
            record["next_cuts"] = self.decide_cuts(round_ + 1)
        return self.logger.log("round", **record)

    def _note_pace(self, steps: list[dict[str, Any]]) -> None:
        """Each client's own seconds per step this round, as a deployed client reports them with its push."""
        if self.clock is None:
            return
        own: dict[int, list[float]] = {}
        for rec in steps:
            own.setdefault(rec["client_id"], []).append(self.clock.own_s(rec))
        self.step_s.update({c: sum(v) / len(v) for c, v in own.items()})

    def _budget_s(self, clients: list[int]) -> float | None:
        """The round's time budget: federation.round_time_s, or `default_budget_s` of these clients' own seconds
        per step last round, as the deployed coordinator takes it."""
        return self.schedule.round_time_s or default_budget_s(self.step_s, clients, self.local_steps)

    def _client_loss(self, cid: int, steps: list[dict[str, Any]]) -> float | None:
        """Mean step loss of `cid` this round (kept from an earlier round if it ran no step)."""
        losses = [s["loss"] for s in steps if s["client_id"] == cid]
        if losses:
            self.clients[cid].last_loss = sum(losses) / len(losses)
        return self.clients[cid].last_loss

    def _time_and_bytes(self, steps: list[dict[str, Any]], delta: dict[int, dict[str, int]],
                        line: Any = None) -> dict[str, Any]:
        """Bytes of the round and its virtual seconds: from the timeline that scheduled it (arrival order or a
        time budget: it also holds the waits for turns a stopped client left unused), else from its steps."""
        kinds = sum_kinds(delta)
        out: dict[str, Any] = {"bytes": self.transport.counter.totals(), **training_traffic(kinds)}
        lora_up = {c: d["lora_up"] for c, d in delta.items()}
        if line is not None:
            seconds = max(line.finish(lora_up).values())
        elif self.clock is not None:
            seconds = self.clock.round_seconds(steps, {c: d["lora_down"] for c, d in delta.items()}, lora_up)
        else:
            return out
        self.virtual_time += seconds
        return {**out, "round_virtual_s": seconds, "virtual_time": self.virtual_time}

    def _scheduled(self, round_: int, plan: RoundPlan, gone: dict[int, int],
                   lora_down: dict[int, int]) -> tuple[list[dict[str, Any]], Any]:
        """The round's steps in the schedule's order, as the virtual clock times them: each client begins its
        next step (forward to the cut) as soon as it is ready, the server serves the requests first come first
        served (`arrival`) or in the plan's turns (`plan`); under a time budget a client begins a step only
        before the budget has passed. Under plan turns a client that stops before the cap leaves its turns in
        the cycle until its push reaches the server (as the deployed coordinator drops them only then): the
        turns after them wait for it."""
        clock = self.clock
        assert clock is not None, "arrival order and time budgets need a clock"
        sch, line = self.schedule, clock.timeline(lora_down)
        budget = self._budget_s(plan.clients) if sch.budget == "time" else None
        cap = self.local_steps if budget is None else sch.cap(self.local_steps)
        limit = {c: min(cap, gone.get(c, cap)) for c in plan.clients}
        done = dict.fromkeys(plan.clients, 0)
        steps: list[dict[str, Any]] = []
        waiting: list[tuple[float, int, Any]] = []  # (arrival, client, its begun step): one per client at most
        turns = [c for c, s in plan.order if s == 0]  # the plan's permutation
        unused: dict[int, float] = {}  # plan turns: client -> when its push frees the turns it left unused

        def begin(c: int) -> None:  # the budget counts from the client's first step (its adapters are in)
            if done[c] < limit[c] and another_step(done[c], line.ready[c] - line.start[c], budget, cap):
                begun = self._begin(c, round_, done[c])
                waiting.append((line.arrival(clock.step_cost(begun[0])), c, begun))
            elif sch.order == "plan" and done[c] < cap and c not in gone:
                unused[c] = line.pushed(c, lora_down.get(c, 0))  # its push carries the adapters it pulled

        def blocked_until(c: int) -> float:
            """Under plan turns: when the unused turns ahead of client c's next one are freed."""
            if sch.order != "plan":
                return 0.0
            mine = (done[c], turns.index(c))
            return max([t for u, t in unused.items() if (done[u], turns.index(u)) < mine], default=0.0)

        def next_served() -> tuple[float, int, Any]:
            if sch.order == "plan":  # lockstep: the next turn of the cycle is served, whenever it arrives
                key = lambda w: (done[w[1]], turns.index(w[1]))  # noqa: E731
            else:  # first come, first served (ties by client id)
                key = lambda w: (w[0], w[1])  # noqa: E731
            w = min(waiting, key=key)
            waiting.remove(w)
            return w

        def joining(first: tuple[float, int, Any]) -> list[tuple[float, int, Any]]:
            """The waiting steps one server step takes with `first` (`server_batch`): under plan the next turns
            of the cycle, under arrival those that arrive by the time it may begin (the server free, plus
            server_batch_wait_ms)."""
            if sch.order == "plan":
                more = sorted(waiting, key=lambda w: (done[w[1]], turns.index(w[1])))
            else:
                begins = max(first[0], line.server_free) + sch.batch_wait_s
                more = sorted((w for w in waiting if w[0] <= begins), key=lambda w: (w[0], w[1]))
            more = more[:sch.server_batch - 1]
            for w in more:
                waiting.remove(w)
            return [first, *more]

        for c in turns:
            begin(c)
        while waiting:
            if sch.server_batch == 1:
                arrived, c, begun = next_served()
                rec = self._finish(c, round_, begun)
                line.serve(clock.step_cost(rec), max(arrived, blocked_until(c)))
                steps.append(rec)
                done[c] += 1
                begin(c)
                continue
            group = joining(next_served())
            recs = self._together(round_, [b for _, _, b in group], server_step=len(steps))
            line.serve_batch([clock.step_cost(r) for r in recs], [max(a, blocked_until(c)) for a, c, _ in group])
            steps += recs
            for _, c, _ in group:
                done[c] += 1
                begin(c)
        return steps, line

    def _planned(self, round_: int, order: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """The round's steps in plan order, `server_batch` consecutive turns of different clients per server step
        (`next_batch`, as the deployed coordinator takes them)."""
        k, steps = self.schedule.server_batch, []
        while order:
            batch = next_batch(order, k)
            order = order[len(batch):]
            if k == 1:
                (cid, step), = batch
                steps.append(self._step(cid, round_, step))
            else:
                steps += self._together(round_, [self._begin(c, round_, s) for c, s in batch], server_step=len(steps))
        return steps

    def _together(self, round_: int, begun: list[tuple[dict[str, Any], Any]],
                  server_step: int) -> list[dict[str, Any]]:
        """Finish begun steps of different clients with one server step (`InProcTransport.step_batch`); their
        records carry `server_step` (its first step's index in the round) for the clock to price them as one."""
        sent: list[Sent] = [b for _, b in begun]
        replies = self.transport.serve_batch([s.request for s in sent])
        out = []
        for s, reply in zip(sent, replies, strict=True):
            cid = s.request.client_id
            self._split_client(cid).finish_step(reply)
            out.append(self._log_step(cid, round_, s.request.step, reply, self.transport.counter.since(s.before)[cid],
                                      server_step=server_step))
        return out

    def _begin(self, cid: int, round_: int, step: int) -> tuple[dict[str, Any], Any]:
        """A step's first half: the client's forward and its request sent (encoded and counted by the transport,
        once), with what the clock needs to time its arrival at the server (shape, cut, the bytes counted up),
        and what finishing it needs (`Sent`). A local step (no split) runs whole here: nothing of it waits for
        the server."""
        client = self.clients[cid]
        if not isinstance(client, SplitClient):
            rec = self._step(cid, round_, step)
            return rec, rec
        req = client.begin_step(round_, step)
        before = self.transport.counter.snapshot([cid])
        sent = Sent(req, self.transport.send(req), before)
        up = self.transport.counter.since(before)[cid]
        rec = {"client_id": cid, "cut": client.cut, "batch": list(client.last_shape),
               "bytes_up": sum(up[k] for k in STEP_UP), "bytes_down": 0}  # the reply's: known once it is back
        return rec, sent

    def _split_client(self, cid: int) -> SplitClient:
        client = self.clients[cid]
        assert isinstance(client, SplitClient), "a begun split step belongs to a split client"
        return client

    def _finish(self, cid: int, round_: int, begun: tuple[dict[str, Any], Any]) -> dict[str, Any]:
        rec, sent = begun
        if sent is rec:  # a local step, run whole in _begin
            return rec
        client = self._split_client(cid)
        reply = client.exchange(self.transport, sent.original, self.transport.serve(sent.request))
        client.finish_step(reply)
        return self._log_step(cid, round_, sent.request.step, reply, self.transport.counter.since(sent.before)[cid])

    def _step(self, cid: int, round_: int, step: int) -> dict[str, Any]:
        client = self.clients[cid]
        before = self.transport.counter.snapshot([cid])
        reply = client.train_step(self.transport, round_, step)
        sent = self.transport.counter.since(before)[cid]
        return self._log_step(cid, round_, step, reply, sent)

    def _log_step(self, cid: int, round_: int, step: int, reply: Any, sent: dict[str, int],
                  server_step: int | None = None) -> dict[str, Any]:
        """The step's record; its bytes are what the transport counted for it (`sent`, by kind)."""
        client = self.clients[cid]
        tail = {"hidden_down": sent["hidden_down"], "grad_hidden_up": sent["grad_hidden_up"]} \
            if sent["hidden_down"] else {}  # a U-shaped step's second crossing (the clock charges it apart)
        joined = {} if server_step is None else {"server_step": server_step}  # served with others in one step
        rec = self.logger.log(
            "step", round=round_, step=step, client_id=cid, cut=client.cut, loss=reply.loss, lr=client.current_lr,
            n_tokens=reply.n_tokens, batch=list(client.last_shape),
            bytes_up=sum(sent[k] for k in STEP_UP), bytes_down=sum(sent[k] for k in STEP_DOWN), **tail, **joined,
        )
        self.on_step(rec)
        return rec

    def decide_cuts(self, round_: int) -> dict[str, int]:
        """Ask the policy for the cuts of `round_`, log its reasons, apply the changes; returns the cuts."""
        assert self.adaptivity is not None
        a = self.adaptivity
        stats = [dataclasses.replace(a.stats[c], loss=self.clients[c].last_loss) for c in sorted(self.clients)]
        current = {c: self.clients[c].cut for c in self.clients}
        decision = a.policy.assign(stats, current if round_ > 0 else {}, round_)
        codecs: dict[str, Any] = {"codecs": {str(c): v for c, v in decision.codecs.items()}} if decision.codecs else {}
        self.logger.log("cut_decision", round=round_, policy=a.policy.name,
                        cuts={str(c): v for c, v in decision.cuts.items()}, **codecs,
                        why={str(c): v for c, v in decision.why.items()},
                        **floor_record(a.bounds, decision.cuts))
        for cid, cut in decision.cuts.items():
            if cut != current[cid]:
                a.recut(cid, cut)
        self._recode(decision.codecs)
        return {str(c): v for c, v in decision.cuts.items()}

    def _recode(self, codecs: dict[int, str]) -> None:
        """Apply the clients' codecs up (codec.up=auto), and tell the policy, whose next decision
        prices them (a resumed run restores them this way)."""
        if not codecs:
            return
        a = self.adaptivity
        assert a is not None, "only an adaptive run chooses codecs"
        for cid, name in codecs.items():
            a.recode(cid, name)
        self.codecs.update(codecs)
        if isinstance(a.policy, CodecChoice):
            a.policy.codecs = dict(self.codecs)

    def evaluate(self, round_: int) -> dict[str, Any]:
        """Held-out loss/ppl/next-token accuracy of the global model, seen through the probe client's cut.

        The probe client (lowest id) loads the global adapters straight from the server (a measurement, not
        protocol traffic); its eval batches still cross the transport and are counted as eval_up / eval_down.
        With different cuts per client, "the global model" is the one a client at the probe's cut would use.
        """
        self.on_phase("evaluate", round_)
        probe = self.clients[min(self.clients)]
        load_adapter_state_dict(probe.part.module, self.server.global_adapters(probe.cut))
        loss_sum, n_tok, n_ok = probe.evaluate(self.transport, self.eval_examples, self.batch_size, self.pad_id,
                                               round_)
        self.on_phase("train", round_)
        loss = loss_sum / max(n_tok, 1)
        return {"eval_loss": loss, "eval_ppl": perplexity(loss), "eval_acc": n_ok / max(n_tok, 1),
                "eval_tokens": n_tok, "eval_cut": probe.cut}


@dataclass
class Sent:
    """A split step begun ahead of its server step (`_begin`): the client's request, as the server received it
    (`InProcTransport.send`: encoded and counted), and the client's byte counts before it."""

    original: ForwardRequest
    request: ForwardRequest
    before: dict[int, dict[str, int]]
