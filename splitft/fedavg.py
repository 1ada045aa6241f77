"""The global adapters: `FedAvgServer` keeps every block's LoRA, takes the clients' pushes, averages them each
round (FedAvg, block by block, weighted by the samples each client trained on) and hands out each cut's view.
It is the whole server of the no-split baselines (FedAvg-LoRA, centralized) and the base of `server.SplitServer`.
"""

from __future__ import annotations

from typing import Any

import torch

from . import lora
from .aggregate import layerwise_fedavg
from .model.families import Family
from .optim import NonFiniteStep
from .transport.base import AdapterUpdate, BackwardRequest, ForwardRequest, StepReply


class FedAvgServer:
    """The global adapters and their aggregation, with no blocks to run: the server of the no-split baselines
    (FedAvg-LoRA, centralized), where clients train the whole model and every block's adapters live in `store`.
    """

    tail_cut: int | None = None
    """Under a U-shaped split, the first block of the clients' tail (they hold [tail_cut, L) too); None: vanilla."""

    def __init__(self, initial_adapters: dict[str, torch.Tensor], family: Family):
        self.family = family
        self.store = {n: t.clone() for n, t in initial_adapters.items()}
        self.pending: list[AdapterUpdate] = []

    def _in_tail(self, name: str) -> bool:
        return self.tail_cut is not None and self._layer(name) >= self.tail_cut

    def _layer(self, name: str) -> int:
        layer = lora.layer_of(name, self.family)
        assert layer is not None, f"{name}: adapters outside blocks are not supported"
        return layer

    # --- the `transport.base.Server` verbs ---------------------------------------------------------------

    def push_adapters(self, update: AdapterUpdate) -> None:
        """Keep a client's adapters until `aggregate`."""
        self.pending.append(update)

    def pull_adapters(self, client_id: int, cut: int, round_: int) -> dict[str, torch.Tensor]:
        """In process the rounds run in order, so the current global adapters are those of `round_`."""
        return self.global_adapters(cut)

    def step(self, req: ForwardRequest) -> StepReply:
        raise NotImplementedError("a FedAvgServer holds no blocks (no-split method); clients train locally")

    def step_batch(self, reqs: list[ForwardRequest]) -> list[StepReply | NonFiniteStep]:
        raise NotImplementedError("a FedAvgServer holds no blocks (no-split method); clients train locally")

    def backward(self, req: BackwardRequest) -> StepReply:
        raise NotImplementedError("a FedAvgServer holds no blocks (no-split method); clients train locally")

    def abandon(self) -> None:
        """Nothing is ever in flight: a FedAvgServer takes no steps."""

    def done(self, client_id: int) -> None:
        """Nothing to do in process: the federation driver knows when its clients are done."""

    def seen(self, client_id: int) -> None:
        """Nothing to do in process: an in-process client cannot go silent."""

    # --- aggregation ---------------------------------------------------------------------------------------

    def aggregate(self) -> list[int]:
        """Merge this round's client adapters (and, on a split server, its own copies of the blocks clients also
        hold) into the global adapters (`layerwise_fedavg`: per element, weighted by samples trained on).

        Returns:
            client ids whose updates were merged (the survivors).
        """
        updates, self.pending = sorted(self.pending, key=lambda u: u.client_id), []  # same sum order everywhere
        own = self._take_own_copies()
        if not updates:  # nobody pushed: the global model is what the server part holds now
            self._keep({})
            return []
        held = 1 + max(self._layer(n) for u in updates for n in u.adapters if not self._in_tail(n))
        base = self._client_side(held)  # blocks [0, held) (and the tail) have client copies
        own = [(sd, w) for sd, w in own if self._layer(next(iter(sd))) < held]
        merged = layerwise_fedavg([u.adapters for u in updates] + [sd for sd, _ in own],
                                  [u.n_samples for u in updates] + [w for _, w in own], base)
        self._keep(merged)
        return [u.client_id for u in updates]

    def _take_own_copies(self) -> list[tuple[dict[str, torch.Tensor], float]]:
        """(adapters, weight) the server itself trained this round, to merge with the clients'; none here."""
        return []

    def _keep(self, merged: dict[str, torch.Tensor]) -> None:
        self.store.update(merged)

    def global_view(self, cut: int) -> dict[str, torch.Tensor]:
        """Current global adapters of blocks [0, cut), full rank."""
        return {n: t.clone() for n, t in self.store.items() if self._layer(n) < cut}

    def n_blocks(self) -> int:
        return 1 + max(self._layer(n) for n in self.store)

    def _client_side(self, cut: int) -> dict[str, torch.Tensor]:
        """Global adapters of the blocks a client at `cut` holds: [0, cut), and under U the tail [tail_cut, L)."""
        view = self.global_view(self.n_blocks() if self.tail_cut is not None else cut)
        return {n: t for n, t in view.items() if self._layer(n) < cut or self._in_tail(n)}

    # --- state (checkpoints are taken at round boundaries: nothing pending) ---------------------------------

    def state_dict(self) -> dict[str, Any]:
        assert not self.pending, "a server's state is taken between rounds, with no update pending"
        return {"store": dict(self.store)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.store = {n: t.clone() for n, t in state["store"].items()}

    def global_adapters(self, cut: int) -> dict[str, torch.Tensor]:
        """What a client holding blocks [0, cut) loads."""
        return self.global_view(cut)

    def global_model(self, eval_cut: int) -> dict[str, torch.Tensor]:
        """The one global model a run reports, evaluates and exports: every block's global adapters, as a
        client at `eval_cut` (the probe's cut) runs them. Without a split, all of them at full rank."""
        return self.global_view(self.n_blocks())
