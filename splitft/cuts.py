"""The composition root's cut half: from a config and a model's shape, what cutting costs and allows: the cost
model (`cost_model_of`), the cut bounds with the privacy floor, the cut policy split.policy names, and the
round-cost table `makespan` and `splitft plan` price cuts with. Both runtimes build their placement from here.
"""

from __future__ import annotations

import torch

from . import lora
from .build import cut_rank
from .config import Config, tail_cut
from .cost import CostModel, Serving
from .errors import UserError
from .model.families import Family, config_of, embedding_table, hf_of
from .model.split import Compute
from .policy import POLICIES, CutBounds, CutPolicy
from .policy.makespan import MakespanPolicy, RoundCosts
from .privacy.floor import floor_cut
from .transport.base import LABEL_DTYPE, MASK_DTYPE, SCALARS_NBYTES
from .transport.compress import codecs_of


def cost_model_of(hf: torch.nn.Module, family: Family, compute: Compute) -> CostModel:
    """The cost model of an HF `*ForCausalLM` run as `compute` says: frozen parameters per block, embeddings, head,
    shapes (shapes only: a model whose weights are still on `meta` gives the same one), the bytes of a stored
    weight and of a kept activation, recompute, the loss's chunk."""
    blocks = family.blocks(hf)
    frozen = [sum(p.numel() for n, p in b.named_parameters() if not lora.is_lora_name(n)) for b in blocks]
    adapters = [sum(p.numel() for n, p in b.named_parameters() if lora.is_lora_name(n)) for b in blocks]
    emb = embedding_table(hf)
    c, p = config_of(hf), compute.precision
    return CostModel(tuple(frozen), emb.numel(), emb.numel(), c.hidden_size, c.num_attention_heads, p.storage.itemsize,
                     act_bytes=p.compute.itemsize, recompute=compute.checkpointing, loss_chunk=compute.loss_chunk,
                     lora_params=tuple(adapters))


def cut_bounds(cfg: Config, cost: CostModel, n_layer: int) -> CutBounds:
    """Allowed cuts and the client memory model (from the model's shape and the training batch shape). Under a
    U-shaped split cuts end before the tail, and the tail's memory is part of every client's base."""
    b, t = cfg.train.batch_size, cfg.data.max_length
    base_gb, block_gb = cost.memory_gb(b, t)
    end = tail_cut(cfg, n_layer)
    if end is not None:
        base_gb += cost.tail_gb(b, t, n_layer - end)
    floor = privacy_floor(cfg, end or n_layer)
    return CutBounds(end or n_layer, max(cfg.split.cut_min, floor), cfg.split.cut_max, base_gb, block_gb,
                     floor if floor > cfg.split.cut_min else 0)


def privacy_floor(cfg: Config, end: int) -> int:
    """The smallest cut split.privacy_floor allows (`privacy.floor.floor_cut`), 0 when off; it must leave room
    below split.cut_max and the model's (or the tail's) end `end`."""
    s = cfg.split
    if not s.privacy_floor:
        return 0
    cut = floor_cut(s.privacy_table, cfg.model.source, cfg.privacy.noise, s.privacy_floor)
    hi = min(s.cut_max or end - 1, end - 1)
    if cut > hi:
        raise UserError(f"split.privacy_floor={s.privacy_floor:g} needs cuts >= {cut}, above the largest allowed "
                        f"({hi}: split.cut_max, or the model's blocks before the tail)")
    return cut


def smallest_cut(cfg: Config, bounds: CutBounds) -> int:
    """The fewest blocks a client may hold, and so the server's first block: split.cut under `fixed`, else the
    privacy floor split.cut_min."""
    return reference_cut(cfg, bounds) if cfg.split.policy == "fixed" else bounds.cut_min


def reference_cut(cfg: Config, bounds: CutBounds) -> int:
    """split.cut, raised to the privacy floor's cut (`cut_bounds`) when that is higher."""
    return max(cfg.split.cut, bounds.floor)


def rule_policy(cfg: Config, bounds: CutBounds) -> CutPolicy:
    """The cut policies that decide from client stats alone: fixed, resource, splitft (`makespan` also needs
    the round-cost table: `cut_policy`)."""
    s = cfg.split
    extra = dict(gamma=s.gamma, period=s.period) if s.policy == "splitft" else {}
    return POLICIES[s.policy](bounds, reference_cut(cfg, bounds), **extra)


def cut_policy(cfg: Config, bounds: CutBounds, costs: RoundCosts | None) -> CutPolicy:
    """split.policy, in the simulation and the deployment alike; `makespan` plans with `costs` (`round_costs`)."""
    s = cfg.split
    if s.policy == "makespan":
        assert costs is not None, "makespan plans with a round-cost table"
        return MakespanPolicy(bounds, costs, reference_cut(cfg, bounds), gamma=s.gamma, period=s.period,
                              tolerance=s.tolerance, hysteresis=s.hysteresis)
    return rule_policy(cfg, bounds)


def held_lora_numel(cfg: Config, family: Family, n_layer: int, cut: int, full: dict[str, torch.Tensor]) -> int:
    """LoRA parameters a client at `cut` trains and exchanges: blocks [0, cut) (and under U its tail), the cut
    layers at r_cut. `full`: the model's adapters (`lora.adapter_state_dict`), taken once by the caller."""
    end = tail_cut(cfg, n_layer) if cut < n_layer else None
    layer = {n: lora.layer_of(n, family) or 0 for n in full}
    held = {n: t for n, t in full.items() if layer[n] < cut or (end is not None and layer[n] >= end)}
    r_cut = cut_rank(cfg)
    if r_cut is None or cut >= n_layer:
        return sum(t.numel() for t in held.values())
    return lora.active_lora_numel(held, family, cut, r_cut, end)


def round_costs(cfg: Config, peft: torch.nn.Module, family: Family, compute: Compute, n_layer: int) -> RoundCosts:
    """What a round costs at each cut for this model, batch shape (B, data.max_length: an upper bound on the
    padded length), codec, LoRA ranks and server (`serving_of`): the numbers the `makespan` policy and `splitft
    plan` predict with. Needs the model's shape and its adapters, not its weights (a deployed server has them)."""
    cost = cost_model_of(hf_of(peft), family, compute)
    b, t = cfg.train.batch_size, cfg.data.max_length
    hidden = config_of(hf_of(peft)).hidden_size
    x = torch.zeros(b, t, hidden, dtype=compute.precision.storage)
    codec_up, codec_down = codecs_of(cfg.codec)
    acts, grads = codec_up.nbytes(x), codec_down.nbytes(x)  # before lossless coding: an upper bound
    labels = b * t * (MASK_DTYPE.itemsize + LABEL_DTYPE.itemsize)  # attention_mask + labels
    full = lora.adapter_state_dict(peft)
    itemsize = next(iter(full.values())).element_size()  # LoRA stays float32 whatever the storage dtype
    end = tail_cut(cfg, n_layer)
    if end is None:
        up, down, tail_flops, tail_up, tail_down = acts + labels, grads + SCALARS_NBYTES, 0.0, 0, 0
    else:  # the mask alone goes up; hidden states down and their gradient up, each (B, T, H) in its direction
        up, down = 2 * acts + b * t * MASK_DTYPE.itemsize, 2 * grads
        tail_flops, tail_up, tail_down = cost.train_flops(end, n_layer, b, t, head=True), acts, grads
    return RoundCosts(client_flops=tuple(cost.train_flops(0, k, b, t) for k in range(n_layer)),
                      server_flops=tuple(cost.train_flops(k, end or n_layer, b, t, head=end is None)
                                         for k in range(n_layer)),
                      lora_bytes=tuple(held_lora_numel(cfg, family, n_layer, k, full) * itemsize
                                       for k in range(n_layer)),
                      step_bytes_up=up, step_bytes_down=down, local_steps=cfg.federation.local_steps,
                      server_tflops=cfg.heterogeneity.server_tflops, order=cfg.federation.order,
                      tail_flops=tail_flops, tail_bytes_up=tail_up, tail_bytes_down=tail_down,
                      forward_share=cost.forward_share,
                      serving=serving_of(cfg))


def serving_of(cfg: Config) -> Serving:
    """How the config's server takes steps, for the clock and the planner."""
    f = cfg.federation
    return Serving(cfg.heterogeneity.server_step_s, f.server_batch, f.server_batch_wait_ms / 1000)
