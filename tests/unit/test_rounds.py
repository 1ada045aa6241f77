"""A deployed round's synchronous state (`deploy/rounds.py`), driven with plain calls: who is in the round, what a
push may carry, who is silent or late, what a client's report says, the round's record."""

import pytest
import torch

from splitft.deploy.rounds import Liveness, Refused, RoundState, check_push, eval_of, pace_of
from splitft.schedule import RoundPlan, Schedule
from splitft.transport.base import AdapterUpdate

WANT = {"a.lora_A": torch.zeros(2, 4), "a.lora_B": torch.zeros(4, 2)}


def _state() -> RoundState:
    return RoundState(RoundPlan(0, [0, 1], [(1, 0), (0, 0), (1, 1), (0, 1)]), Schedule(), cap=2, started=10.0)


def _push(cid=0, round_=0, n=4, **override) -> AdapterUpdate:
    return AdapterUpdate(cid, round_, {**{k: torch.ones_like(v) for k, v in WANT.items()}, **override}, n)


def _trained(state: RoundState, cid: int, steps: int = 2) -> None:
    """`steps` of `cid` applied (the turns' position moves as if they were the next ones)."""
    for _ in range(steps):
        state.applied(cid, rows=2, tokens=30)


def test_a_push_is_taken_once_after_the_clients_steps_and_a_resend_is_told_apart():
    s = _state()
    with pytest.raises(Refused, match="before finishing its steps"):
        s.take_push(_push(), cut=2, want=WANT, due=2, cap=4)
    _trained(s, 0)
    assert s.take_push(_push(), cut=2, want=WANT, due=2, cap=s.trained[0]) is True
    assert s.take_push(_push(), cut=2, want=WANT, due=2, cap=4) is False, "a resend"
    assert s.pushed == {0} and not s.complete and s.expects(1) and not s.expects(0)


def test_a_push_of_another_round_a_stranger_or_a_dropped_client_is_refused():
    s = _state()
    with pytest.raises(Refused, match="not expected now"):
        s.take_push(_push(round_=1), cut=2, want=WANT, due=0, cap=None)
    with pytest.raises(Refused, match="not expected now"):
        RoundState(RoundPlan(0, [1], [(1, 0)]), Schedule(), 1, 0.0).take_push(_push(), 2, WANT, 0, None)
    assert s.drop(0, "silent") == [] and s.dropped == {0: "silent"}
    with pytest.raises(Refused, match="dropped from round 0 .silent."):
        s.take_push(_push(), cut=2, want=WANT, due=2, cap=4)
    assert "dropped" in s.refusal(0, 0, 1) and s.refusal(1, 0, 0) is None and s.gone(0, 0) and s.gone(1, 1)


@pytest.mark.parametrize("update, cut, match", [
    (_push(), None, "without pulling it"),
    (_push(**{"b.lora_A": torch.ones(1)}), 2, "unexpected: b.lora_A"),
    (AdapterUpdate(0, 0, {"a.lora_A": torch.ones(2, 4)}, 4), 2, "missing: a.lora_B"),
    (_push(**{"a.lora_A": torch.ones(3, 4)}), 2, r"shape \(2, 4\), got torch.float32 \(3, 4\)"),
    (_push(**{"a.lora_A": torch.ones(2, 4, dtype=torch.bfloat16)}), 2, "must be a finite torch.float32"),
    (_push(**{"a.lora_B": torch.full((4, 2), float("nan"))}), 2, "must be a finite"),
    (_push(n=5), 2, "claims 5 samples for round 0; the server saw it train 4"),
    (_push(n=0), 2, "claims 0 samples"),
])
def test_a_push_carries_exactly_the_finite_adapters_it_pulled_for_the_samples_it_trained(update, cut, match):
    with pytest.raises(Refused, match=match):
        check_push(update, cut, WANT, cap=4)


def test_the_round_record_counts_what_the_server_applied():
    s = _state()
    _trained(s, 0)
    s.applied(1, rows=2, tokens=7)
    s.server_steps = 3
    s.drop(1, "late")
    assert s.complete is False
    s.take_push(_push(), 2, WANT, 2, 4)
    assert s.complete and s.began(1) and not _state().began(0)
    assert s.record([0], {"0": 2}) == {"round": 0, "clients": [0], "cuts": {"0": 2}, "dropped": {"1": "late"},
                                       "steps_by_client": {"0": 2, "1": 1}, "train_tokens": 67, "server_steps": 3}


def test_a_client_is_silent_after_dead_after_s_and_late_after_the_round_deadline():
    live = Liveness(dead_after_s=10, round_timeout_s=100, t0=0.0)
    assert live.why_drop(0, now=50, started=0) is None, "never connected: not silent, not late yet"
    live.seen(0, 45)
    assert live.why_drop(0, now=50, started=0) is None
    assert live.why_drop(0, now=56, started=0).startswith("silent for 11 s (server.dead_after_s=10)")
    live.seen(0, 105)
    assert "not done 106 s into the round (server.round_timeout_s=100)" in live.why_drop(0, 106, started=0)
    assert live.gone(range(3), now=110) == {1, 2}, "never connected by the deadline"
    assert live.gone(range(3), now=99) == set()


def test_a_clients_report_is_read_only_when_its_numbers_are_sane():
    assert pace_of({"train_s": 3.0, "steps": 2}) == 1.5
    assert pace_of({"train_s": "x", "steps": 2}) is None and pace_of({"train_s": 3.0, "steps": 0}) is None
    assert pace_of({}) is None and pace_of({"train_s": 1e7, "steps": 1}) is None
    good = {"round": 0, "loss_sum": 12.5, "n_tokens": 10, "n_correct": 3}
    assert eval_of({"eval": good}, rounds=2) == (0, 12.5, 10, 3)
    assert eval_of({"eval": {**good, "round": -1}}, rounds=2) == (-1, 12.5, 10, 3), "the model before training"
    for bad in ({**good, "round": 2}, {**good, "n_tokens": 0}, {**good, "n_correct": 11},
                {**good, "loss_sum": float("nan")}, {**good, "loss_sum": -1}, {"round": 0}, "text"):
        assert eval_of({"eval": bad}, rounds=2) is None, bad
    assert eval_of({}, rounds=2) is None
