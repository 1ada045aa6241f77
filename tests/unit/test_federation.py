"""Round planning: interleaved, deterministic, partial participation."""

from splitft.federation import plan_round


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
