"""splitft experiment's statistics over seeds: Student's t intervals, differences paired by seed."""

import math

import pytest

from splitft.errors import UserError
from splitft.metrics import interval
from splitft.sim.experiment import parse_seeds, seed_statistics


def test_intervals_use_students_t_and_pair_by_seed():
    i = interval([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3: t(0.975, 2) = 4.303
    assert i["mean"] == 2.0 and i["ci95"] == pytest.approx(4.303 / math.sqrt(3)) and i["n"] == 3
    assert interval([5.0])["ci95"] is None and interval([])["mean"] is None
    row = lambda ppl, t: {"final_eval_ppl": ppl, "virtual_time_to_target_s": t, "bytes_up": 1e6}  # noqa: E731
    rows = {0: {"sfl-fixed": row(60.0, 10.0), "splitft": row(58.0, None)},
            1: {"sfl-fixed": row(70.0, 12.0), "splitft": row(69.0, 11.0)}}
    stats = seed_statistics(rows, ["splitft", "sfl-fixed"])
    assert stats["paired"]["splitft"]["final_eval_ppl"]["mean"] == -1.5  # (-2 + -1) / 2, not 63.5 - 65
    assert stats["paired"]["splitft"]["virtual_time_to_target_s"]["n"] == 1  # seed 0 never reached the target
    assert stats["methods"]["splitft"]["not_reached"] == 1
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    with pytest.raises(UserError, match="--seeds: distinct"):
        parse_seeds("1,1")
