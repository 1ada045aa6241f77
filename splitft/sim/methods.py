"""How each method is assembled from the same `Setup` (same model, data, partition, seeds): who holds which
blocks, which cut policy, which devices the virtual clock charges.

    split        SplitClient per client + SplitServer; cuts from split.policy (fixed = SFL / SplitLoRA,
                 splitft = SplitFT's adaptive cuts); cut layer at lora.r_cut
    fedlora      LocalClient per client (whole model, no split) + FedAvgServer (aggregation only)
    centralized  one LocalClient on the pooled training data, running on the server's device
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .. import build, cuts, lora
from ..build import Setup, client_stream, optimizer_settings, split_client, split_server
from ..client import LocalClient
from ..config import tail_cut
from ..cost import CostModel
from ..cuts import cost_model_of
from ..devices import client_profiles
from ..errors import UserError
from ..fedavg import FedAvgServer
from ..metrics import MetricsLogger
from ..model.families import config_of, hf_of
from ..model.split import FullPart
from ..policy import ClientStats, CutBounds
from ..policy.codecs import CodecChoice, CodecOption, options_within
from ..policy.makespan import RoundCosts
from ..registry import Registry
from ..schedule import Schedule
from ..transport.compress import AUTO, CODECS, NONE, codec_of, codecs_of
from ..transport.inproc import InProcTransport
from .clock import VirtualClock
from .federation import Adaptivity, Federation
from .profiles import DeviceProfile, server_profile

OnStep = Callable[[dict[str, Any]], None] | None


def cost_model(setup: Setup) -> CostModel:
    return cost_model_of(hf_of(setup.peft), setup.family, setup.compute)


def cut_bounds(setup: Setup) -> CutBounds:
    """Allowed cuts and the client memory model (from the model's shape and the training batch shape)."""
    return cuts.cut_bounds(setup.cfg, cost_model(setup), setup.n_layer)


def over_memory(setup: Setup) -> dict[str, dict[str, Any]]:
    """Split clients whose device memory fits no cut they may be given: the smallest is split.cut under `fixed`
    and split.cut_min otherwise. {client: device, budget, the smallest cut and its estimated need}."""
    cfg = setup.cfg
    if cfg.federation.method != "split":
        return {}
    bounds = cut_bounds(setup)
    smallest = cuts.smallest_cut(cfg, bounds)
    need = bounds.base_gb + smallest * bounds.block_gb
    devices = client_profiles(cfg.heterogeneity, cfg.federation.n_clients, cfg.federation.seed)
    return {str(c): {"device": d.name, "memory_gb_budget": d.memory_gb, "cut": smallest,
                     "memory_gb_needed": round(need, 3)} for c, d in enumerate(devices) if need > d.memory_gb}


def check_placement(setup: Setup) -> dict[str, dict[str, Any]]:
    """Refuse a run that would put a client over its memory budget, unless split.allow_over_memory; returns
    the clients that run over it anyway (for the log and the setup record).

    Raises:
        UserError: naming each such client, its budget and the smallest cut's need, and the fixes.
    """
    over = over_memory(setup)
    if over and not setup.cfg.split.allow_over_memory:
        who = "; ".join(f"client {c} ({o['device']}): {o['memory_gb_budget']:g} GB budget, cut {o['cut']} needs "
                        f"{o['memory_gb_needed']:g} GB" for c, o in over.items())
        s = setup.cfg.split
        tail = "" if s.shape != "u" else f" (split.tail={s.tail} and the head's logits are part of it" + (
            ": lower split.tail, or use split.shape=vanilla)" if s.tail > 1 else ": use split.shape=vanilla)")
        raise UserError(f"no cut fits in memory for {who}{tail}; give the device more memory (heterogeneity.tiers), "
                        f"lower split.cut_min (or split.cut under split.policy=fixed), lower train.batch_size or "
                        f"data.max_length, or run anyway with split.allow_over_memory=true")
    return over


def _federation(setup: Setup, server: FedAvgServer, clients: dict, devices: dict[int, DeviceProfile],
                logger: MetricsLogger, on_step: OnStep, local_steps: int, per_round: int,
                adaptivity: Adaptivity | None = None, networked: bool = True) -> Federation:
    """The federation over the in-process transport; clients drop out with federation.dropout (the centralized
    trainer, which is not networked, never does)."""
    cfg = setup.cfg
    clock = VirtualClock(cost_model(setup), devices, server_profile(cfg.heterogeneity), order=cfg.federation.order,
                         tail_cut=tail_cut(cfg, setup.n_layer) if cfg.federation.method == "split" else None,
                         serving=cuts.serving_of(cfg))
    logger.log("setup", method=cfg.federation.method, partition_sizes=[len(p) for p in setup.parts],
               data=setup.data_record(), eval_samples=len(setup.eval), n_layer=setup.n_layer, family=setup.family.name,
               device=str(setup.device), devices={str(c): vars(d) for c, d in devices.items()},
               over_memory=over_memory(setup), precision=setup.compute.precision.record(),
               activation_checkpointing=setup.compute.checkpointing, loss_chunk_tokens=setup.compute.loss_chunk)
    transport = InProcTransport(server, networked, *codecs_of(cfg.codec))
    return Federation(server, clients, transport, eval_examples=setup.eval, batch_size=cfg.train.batch_size,
                      pad_id=setup.pad_id, local_steps=local_steps, clients_per_round=per_round,
                      seed=cfg.federation.seed, logger=logger, on_step=on_step, clock=clock, adaptivity=adaptivity,
                      dropout=cfg.federation.dropout if networked else 0.0,
                      schedule=Schedule.of(cfg.federation) if networked else Schedule())


def build_split(setup: Setup, logger: MetricsLogger, on_step: OnStep = None) -> Federation:
    cfg, peft, fam = setup.cfg, setup.peft, setup.family
    bounds = cut_bounds(setup)
    first = cuts.smallest_cut(cfg, bounds)
    server = split_server(cfg, peft, fam, first, setup.compute)
    clients = {cid: split_client(setup, cid, cfg.split.cut) for cid in range(len(setup.parts))}
    devices = dict(enumerate(client_profiles(cfg.heterogeneity, len(clients), cfg.federation.seed)))
    policy = _policy(setup, bounds)

    def recut(cid: int, cut: int) -> None:
        clients[cid].replace_part(build.client_part(cfg, peft, fam, cut, setup.compute))

    stats = client_stats(devices)
    fed = _federation(setup, server, clients, devices, logger, on_step, cfg.federation.local_steps,
                      cfg.federation.clients_per_round, Adaptivity(policy, stats, recut, bounds=bounds))
    if cfg.codec.up == AUTO:
        _choose_codecs(setup, fed, logger)
    fed.decide_cuts(0)
    return fed


def _choose_codecs(setup: Setup, fed: Federation, logger: MetricsLogger) -> None:
    """codec.up=auto: measure every codec's ppl cost (at the reference cut, the clients' cut now),
    then wrap the cut policy in a `CodecChoice` over those within codec.max_ppl_cost."""
    cfg, a = setup.cfg, fed.adaptivity
    assert a is not None
    t = cfg.codec
    codecs = {n: codec_of(n, t.entropy) for n in CODECS if n != NONE.name}
    costs = codec_costs(fed, codecs)
    logger.log("codec_costs", cut=cfg.split.cut, max_ppl_cost=t.max_ppl_cost, ppl_cost=costs)
    table = round_costs(setup)  # priced with `none` up (auto's start)
    hidden = config_of(hf_of(setup.peft)).hidden_size
    x = torch.zeros(cfg.train.batch_size, cfg.data.max_length, hidden, dtype=setup.compute.precision.storage)
    options = [CodecOption(n, c.bits, table.step_bytes_up - NONE.nbytes(x) + c.nbytes(x), costs[n])
               for n, c in {NONE.name: NONE, **codecs}.items()]
    a.policy = CodecChoice(a.policy, table, options_within(options, t.max_ppl_cost), cfg.split.tolerance,
                           {o.name: o.ppl_cost for o in options if o.ppl_cost > t.max_ppl_cost and o.name != "none"})
    a.recode = lambda cid, name: fed.transport.use_codec_up(cid, codec_of(name, t.entropy))


def _policy(setup: Setup, bounds: CutBounds) -> Any:
    return cuts.cut_policy(setup.cfg, bounds, round_costs(setup) if setup.cfg.split.policy == "makespan" else None)


def client_stats(devices: dict[int, DeviceProfile]) -> dict[int, ClientStats]:
    """What the policies know of each simulated client: its profile (speed, memory, link)."""
    return {c: ClientStats(c, speed=d.tflops, memory_gb=d.memory_gb, up_mbps=d.up_mbps, down_mbps=d.down_mbps,
                           latency_ms=d.latency_ms) for c, d in devices.items()}


def held_lora_numel(setup: Setup, cut: int, full: dict[str, torch.Tensor]) -> int:
    return cuts.held_lora_numel(setup.cfg, setup.family, setup.n_layer, cut, full)


def round_costs(setup: Setup) -> RoundCosts:
    """What a round costs at each cut (`cuts.round_costs`): what the `makespan` policy and `splitft plan`
    predict with."""
    return cuts.round_costs(setup.cfg, setup.peft, setup.family, setup.compute, setup.n_layer)


def build_fedlora(setup: Setup, logger: MetricsLogger, on_step: OnStep = None) -> Federation:
    cfg = setup.cfg
    server = FedAvgServer(lora.adapter_state_dict(setup.peft), setup.family)
    clients = {cid: LocalClient(cid, FullPart(setup.peft, setup.family, setup.compute), client_stream(setup, cid, idx),
                                **optimizer_settings(setup.cfg))
               for cid, idx in enumerate(setup.parts)}
    devices = dict(enumerate(client_profiles(cfg.heterogeneity, len(clients), cfg.federation.seed)))
    return _federation(setup, server, clients, devices, logger, on_step, cfg.federation.local_steps,
                       cfg.federation.clients_per_round)


def build_centralized(setup: Setup, logger: MetricsLogger, on_step: OnStep = None) -> Federation:
    """One trainer, all training data, as many steps per round as the whole federation takes."""
    cfg = setup.cfg
    server = FedAvgServer(lora.adapter_state_dict(setup.peft), setup.family)
    pooled = sorted(i for idx in setup.parts for i in idx)
    n = cfg.federation.clients_per_round or cfg.federation.n_clients
    client = LocalClient(0, FullPart(setup.peft, setup.family, setup.compute), client_stream(setup, 0, pooled),
                         **optimizer_settings(setup.cfg, cfg.federation.local_steps * n))
    return _federation(setup, server, {0: client}, {0: server_profile(cfg.heterogeneity)}, logger, on_step,
                       cfg.federation.local_steps * n, 0, networked=False)


def client_report(setup: Setup, fed: Federation, rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per client: device, its training samples and how many of them were cut to data.max_length, largest cut
    held, estimated training memory vs budget, LoRA parameters it trains at its final cut, LoRA bytes it
    exchanged."""
    cfg, cost = setup.cfg, cost_model(setup)
    bounds = cut_bounds(setup) if cfg.federation.method == "split" else None
    base_gb, block_gb = (bounds.base_gb, bounds.block_gb) if bounds else cost.memory_gb(cfg.train.batch_size,
                                                                                         cfg.data.max_length)
    devices = fed.clock.devices if isinstance(fed.clock, VirtualClock) else {}
    full = lora.adapter_state_dict(setup.peft)
    out = {}
    for cid, client in fed.clients.items():
        max_cut = max([r["cuts"].get(str(cid), 0) for r in rounds if "cuts" in r] + [client.cut])
        need = cost.full_model_gb(cfg.train.batch_size, cfg.data.max_length) if max_cut >= setup.n_layer \
            else base_gb + max_cut * block_gb
        numel = held_lora_numel(setup, client.cut, full)
        bytes_ = fed.transport.counter.bytes[cid]
        dev = devices.get(cid)
        budget = dev.memory_gb if dev and math.isfinite(dev.memory_gb) else None
        data = client.stream.examples  # the centralized trainer's: everyone's
        out[str(cid)] = {"device": dev.name if dev else None, "train_samples": len(data),
                         "truncated": sum(e.truncated for e in data), "final_cut": client.cut, "max_cut": max_cut,
                         "memory_gb_needed": round(need, 3), "memory_gb_budget": budget,
                         "lora_params": numel, "lora_up": bytes_["lora_up"], "lora_down": bytes_["lora_down"]}
    return out


METHODS = Registry("federation.method", {"split": build_split, "fedlora": build_fedlora,
                                         "centralized": build_centralized})


def build_federation(setup: Setup, logger: MetricsLogger, on_step: OnStep = None) -> Federation:
    return METHODS[setup.cfg.federation.method](setup, logger, on_step)


def codec_costs(fed: Federation, codecs: dict[str, Any]) -> dict[str, float]:
    """Relative change of held-out ppl (the global model at the probe client's cut) with the probe's
    activations up encoded by each of `codecs` ({name: Codec}), against `none`: the quality guard of
    codec.up=auto, measured before training. A measurement: its bytes are not counted."""
    probe, t = min(fed.clients), fed.transport
    saved, before = t.counter.state_dict(), t.codec_up(probe)
    ppl = {}
    for name, codec in {"none": NONE, **codecs}.items():
        t.use_codec_up(probe, codec)
        ppl[name] = fed.evaluate(-1)["eval_ppl"]
    t.use_codec_up(probe, before)
    t.counter.load_state_dict(saved)
    return {name: p / ppl["none"] - 1 for name, p in ppl.items()}
