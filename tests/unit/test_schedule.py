"""The schedule both runtimes share: round plans (interleaved, deterministic, partial participation), the
default time budget, whether a client begins another step."""

from splitft.schedule import another_step, default_budget_s, plan_round


def test_steps_are_interleaved_across_clients():
    plan = plan_round(0, [0, 1, 2], per_round=0, local_steps=3, seed=5)
    first = [c for c, _ in plan.order[:3]]
    assert sorted(first) == [0, 1, 2] and [c for c, _ in plan.order] == first * 3
    assert [s for _, s in plan.order] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_plan_is_deterministic_per_seed_and_round():
    assert plan_round(3, [0, 1, 2, 3], 2, 2, seed=1) == plan_round(3, [0, 1, 2, 3], 2, 2, seed=1)
    orders = {tuple(plan_round(r, [0, 1, 2, 3], 0, 1, seed=1).order) for r in range(8)}
    assert len(orders) > 1, "the interleaving order should change between rounds"


def test_partial_participation_selects_the_requested_count():
    plan = plan_round(0, list(range(10)), per_round=3, local_steps=2, seed=0)
    assert len(plan.clients) == 3 and len(plan.order) == 6


def test_the_default_budget_is_the_median_clients_local_steps_or_the_slowest_ones_single_step():
    pace = {0: 1.0, 1: 2.0, 2: 3.0, 3: 50.0}
    assert default_budget_s(pace, [0, 1, 2], 4) == 8.0  # the upper median's 4 steps
    assert default_budget_s(pace, [0, 1, 2, 3], 4) == 50.0, "a phone's one step outlasts the others' budget"
    assert default_budget_s(pace, [4], 4) is None, "no pace known: the round runs local_steps"


def test_a_client_runs_local_steps_without_a_budget_and_under_one_at_least_one_step_up_to_the_cap():
    assert [another_step(d, 99.0, None, 3) for d in range(4)] == [True, True, True, False]
    assert another_step(0, 5.0, 1.0, 4), "every client runs at least one step, however late"
    assert another_step(2, 0.5, 1.0, 4) and not another_step(2, 1.0, 1.0, 4), "until the budget has passed"
    assert not another_step(4, 0.1, 1.0, 4), "never past the cap"
