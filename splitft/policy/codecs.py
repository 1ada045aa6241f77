"""A codec per client (`codec.up=auto`): with each decision of the cut policy, each client's codec for
its activations up, priced by the round-time model and kept within a measured quality budget.

Where the uplink sets the round (the default federation: a phone on 10 Mbit/s), fewer bytes up shorten it;
where it does not (a workstation on a fast link), compression buys nothing and costs quality. So:
  1. the options: codecs whose measured cost (relative change of held-out ppl with the activations at the
     reference cut encoded, `sim.methods.codec_costs`) is within codec.max_ppl_cost; `none` always;
  2. the fastest: every client on its option of fewest bytes; the round it predicts is T*;
  3. in client-id order, each client takes the least lossy option (most bits; then the lower measured cost)
     with which the predicted round stays within (1 + tolerance) of T*, the others as they stand.
The prediction is makespan's (`RoundCosts`: clients in parallel, one FIFO server, each client's link), with
each client's step bytes up at its codec. Under the makespan policy the cuts are searched with the codecs of
the previous decision priced in, then the codecs chosen for those cuts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .base import ClientStats, CutPolicy, Decision
from .makespan import MakespanPolicy, RoundCosts


@dataclass(frozen=True)
class CodecOption:
    name: str
    bits: int
    step_bytes_up: int
    """One step's bytes up (activations as this codec encodes them, before lossless coding, + mask + labels)."""
    ppl_cost: float
    """Measured relative change of held-out ppl with this codec (0.004 = +0.4%)."""


def options_within(options: list[CodecOption], budget: float) -> list[CodecOption]:
    """The options within the quality budget (`none`, cost 0 by definition, always), least lossy first."""
    ok = [o for o in options if o.ppl_cost <= budget or o.name == "none"]
    return sorted(ok, key=lambda o: (-o.bits, o.ppl_cost, o.name))


@dataclass
class CodecChoice:
    """Wraps a cut policy: its cuts, and a codec per client for them."""

    inner: CutPolicy
    costs: RoundCosts
    options: list[CodecOption]
    """Admissible options, least lossy first (`options_within`)."""
    tolerance: float = 0.02
    """How much slower than the fastest codecs' round the chosen codecs may make it (0.02 = 2%)."""
    excluded: dict[str, float] = field(default_factory=dict)
    """Codecs over the quality budget, with their measured cost (for the decision records)."""
    codecs: dict[int, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.inner.name

    def assign(self, stats: list[ClientStats], current: dict[int, int], round_: int) -> Decision:
        if isinstance(self.inner, MakespanPolicy):  # search the cuts with this round's codecs priced in
            self.inner.costs = self._priced(self.codecs)
        d = self.inner.assign(stats, current, round_)
        self.codecs, why = self.choose(d.cuts, {s.client_id: s for s in stats})
        return Decision(d.cuts, {c: {**d.why.get(c, {}), **why[c]} for c in d.cuts}, dict(self.codecs))

    def choose(self, cuts: Mapping[int, int], stats: Mapping[int, ClientStats]) -> tuple[dict[int, str],
                                                                                            dict[int, dict[str, Any]]]:
        fewest = min(self.options, key=lambda o: (o.step_bytes_up, -o.bits)).name
        chosen = dict.fromkeys(cuts, fewest)
        fastest_s = self._priced(chosen).round_s(cuts, stats)
        limit = fastest_s * (1 + self.tolerance)
        why: dict[int, dict[str, Any]] = {}
        for c in sorted(cuts):
            for o in self.options:
                t = self._priced({**chosen, c: o.name}).round_s(cuts, stats)
                if t <= limit + 1e-12:
                    chosen[c] = o.name
                    why[c] = {"codec": o.name, "codec_rule": "least lossy within tolerance",
                              "codec_round_s": t, "fastest_codecs_round_s": fastest_s,
                              "codec_ppl_cost": o.ppl_cost, "codec_bytes_up": o.step_bytes_up}
                    break
        for c in why:
            why[c]["over_ppl_budget"] = dict(self.excluded)
        return chosen, why

    def _priced(self, codecs: Mapping[int, str]) -> RoundCosts:
        by_name = {o.name: o for o in self.options}
        return replace(self.costs, client_bytes_up={c: by_name[n].step_bytes_up for c, n in codecs.items()})
