"""Cut policies: pure decisions of each client's cut from plain data (no torch, no models).

    policy = POLICIES["splitft"](bounds, cut=2, gamma=0.5, period=2)
    decision = policy.assign(stats, current_cuts, round_)   # decision.cuts: {client_id: cut}
The split machinery (`model/split.py`) applies a decision; nothing here touches a model.
"""

from ..registry import Registry
from .base import ClientStats, CutBounds, CutPolicy, Decision, floor_record, max_feasible_cut
from .fixed import FixedPolicy
from .makespan import MakespanPolicy
from .resource import ResourcePolicy
from .splitft import SplitFTPolicy

POLICIES = Registry("split.policy", {"fixed": FixedPolicy, "resource": ResourcePolicy, "splitft": SplitFTPolicy,
                                     "makespan": MakespanPolicy})

__all__ = ["POLICIES", "ClientStats", "CutBounds", "CutPolicy", "Decision", "FixedPolicy", "ResourcePolicy",
           "SplitFTPolicy", "floor_record", "max_feasible_cut"]
