"""Virtual clock and device profiles (sim/), against hand-computed cases."""

import math

import pytest

from splitft.config import load_config
from splitft.cost import CostModel, Serving, StepCost, round_time, server_steps, transfer_s
from splitft.devices import TIERS, client_profiles
from splitft.sim.profiles import DeviceProfile

# 1 TFLOP/s, 8 Mbit/s (1 MB/s) both ways, no latency: 1e12 FLOPs = 1 s, 1e6 bytes = 1 s
DEV = DeviceProfile("d", 1.0, 1.0, 8.0, 8.0, 0.0)
SERVER = DeviceProfile("server", 2.0, math.inf, math.inf, math.inf, 0.0)


def test_transfer_is_latency_plus_bits_over_bandwidth():
    assert transfer_s(1e6, 8.0, 0.0) == 1.0 and transfer_s(0, 8.0, 30.0) == pytest.approx(0.03)


def test_one_client_step_is_forward_upload_server_download_backward():
    # fwd 1 s + up 1 s + server 2e12/2e12 = 1 s + down 0.5 s + bwd 1 s = 4.5 s; pull 0.25 s before, push 0.5 s
    t = round_time([StepCost(0, 2e12, 2e12, 1_000_000, 500_000)], {0: DEV}, SERVER, {0: 250_000}, {0: 500_000})
    assert t == {0: pytest.approx(0.25 + 4.5 + 0.5)}


def test_two_clients_share_one_fifo_server():
    # both arrive at t=2 (fwd 1 + up 1); server takes 2 s each: c0 served 2-4, c1 waits, served 4-6
    step = dict(client_flops=2e12, server_flops=4e12, bytes_up=1_000_000)
    t = round_time([StepCost(0, **step), StepCost(1, **step)], {0: DEV, 1: DEV}, SERVER, {}, {})
    assert t == {0: pytest.approx(4 + 1), 1: pytest.approx(6 + 1)}


def test_a_joined_server_step_pays_its_overhead_once_and_waits_for_its_last_request():
    # both arrive at t=2; server_step_s 3 + FLOPs 2 s each: one by one c0 is served 2-7, c1 7-12; joined both
    # are served 2-12 in one step with one overhead: 2 + 3 + 4 = 9, then each downloads (0) and runs backward 1 s
    step = dict(client_flops=2e12, server_flops=4e12, bytes_up=1_000_000)
    alone = round_time([StepCost(0, **step), StepCost(1, **step)], {0: DEV, 1: DEV}, SERVER, {}, {}, "plan",
                       Serving(step_s=3.0))
    assert alone == {0: pytest.approx(7 + 1), 1: pytest.approx(12 + 1)}
    joined = [StepCost(0, **step, server_step=0), StepCost(1, **step, server_step=0)]
    both = round_time(joined, {0: DEV, 1: DEV}, SERVER, {}, {}, "plan", Serving(step_s=3.0, batch=2))
    assert both == {0: pytest.approx(9 + 1), 1: pytest.approx(9 + 1)}
    fifo = round_time([StepCost(0, **step), StepCost(1, **step)], {0: DEV, 1: DEV}, SERVER, {}, {}, "arrival",
                      Serving(step_s=3.0, batch=2))
    assert fifo == both, "under arrival the server step takes what has arrived when it may begin"


def test_server_steps_join_consecutive_turns_of_different_clients():
    assert server_steps([2, 0, 1, 2, 0, 1], 2) == [0, 0, 2, 2, 4, 4]
    assert server_steps([2, 0, 1, 2, 0, 1], 4) == [0, 0, 0, 3, 3, 3], "a client's second turn starts the next"
    assert server_steps([0, 1, 0], 1) == [0, 1, 2]


def test_local_steps_never_touch_the_server_queue():
    t = round_time([StepCost(0, 3e12), StepCost(0, 3e12), StepCost(1, 1e12)], {0: DEV, 1: DEV}, SERVER, {}, {})
    assert t == {0: pytest.approx(6.0), 1: pytest.approx(1.0)}


def test_flops_and_memory_follow_the_model_shape():
    cost = CostModel(block_params=(100, 100), embed_params=50, head_params=40, d_model=4, n_heads=2, param_bytes=4)
    # per token: block fwd 2*100 + 4*T*d = 200 + 4*3*4 = 248; head 2*40 = 80; x2 for training; 2*3 tokens
    assert cost.train_flops(0, 1, batch=2, seq=3) == 2 * 6 * 248
    assert cost.train_flops(1, 2, batch=2, seq=3, head=True) == 2 * 6 * (248 + 80)
    base, block = cost.memory_gb(batch=1, seq=2)
    acts = 2 * 4 * (34 + 5 * 2 * 2 / 4) * 2  # Korthikanti at 16 bits for (B, T) = (1, 2), scaled to 4 bytes
    # base: embeddings and the backward's working set (the gradients of the block back-propagated)
    assert base == pytest.approx((200 + acts) / 1e9) and block == pytest.approx((400 + acts) / 1e9)


def test_checkpointing_trades_kept_activations_for_a_third_forward_and_the_chunked_loss_bounds_the_logits():
    """The numbers the cut policies and `splitft plan` use, with weights at 2 bytes (bf16 storage) and
    activations at 2 (bf16 compute)."""
    kw = dict(block_params=(100, 100), embed_params=50, head_params=40, d_model=4, n_heads=2, param_bytes=2,
              lora_params=(10, 10))
    plain, again = CostModel(**kw), CostModel(**kw, recompute=True)
    assert again.train_flops(0, 1, batch=2, seq=3) == 3 * 6 * 248, "forward, backward and the forward again"
    assert again.train_flops(1, 2, batch=2, seq=3, head=True) == 2 * 6 * (248 + 80) + 6 * 248, "head not redone"
    assert (plain.forward_share, again.forward_share) == (0.5, 1 / 3)
    acts = 2 * 4 * (34 + 5 * 2 * 2 / 4) * 2 / 2  # Korthikanti at 16 bits, (B, T) = (1, 2)
    adapters, trained = 4 * 20, 16 * 10  # every block's initial LoRA (fp32); one block's with its grad and AdamW's
    assert plain.memory_gb(batch=1, seq=2) == (pytest.approx((100 + adapters + acts) / 1e9),
                                               pytest.approx((200 + acts + trained) / 1e9))
    # recompute: a block keeps its input (B*T*d at 2 bytes); base: the block recomputed and its gradients
    assert again.memory_gb(batch=1, seq=2) == (pytest.approx((100 + adapters + 2 * acts) / 1e9),
                                               pytest.approx((200 + 16 + trained) / 1e9))
    vocab = 10  # head_params / d_model
    assert plain.head_gb(batch=4, seq=8) == 2 * 32 * vocab * 2 / 1e9, "logits (B, T, V) and their gradient"
    chunked = CostModel(**kw, loss_chunk=5)
    assert chunked.head_gb(batch=4, seq=8) == (5 * vocab * (4 + 2 * 2) + 32 * 4 * 2) / 1e9
    assert again.server_gb(1, 2, batch=1, seq=2) == pytest.approx((2 * (100 + 40) + 16 + 2 * acts + adapters + trained)
                                                                  / 1e9 + again.head_gb(batch=1, seq=2))


def test_profiles_are_seeded_and_lists_are_taken_as_given():
    cfg = load_config(None, ["federation.n_clients=6", "heterogeneity.profile=tiers"]).heterogeneity
    assert client_profiles(cfg, 6, seed=1) == client_profiles(cfg, 6, seed=1)
    assert {p.name for p in client_profiles(cfg, 40, seed=1)} == {"phone", "laptop", "workstation"}
    custom = load_config(None, ["federation.n_clients=2", "heterogeneity.profile=list",
                                "heterogeneity.devices=[edge,phone]",
                                "heterogeneity.tiers=[{name: edge, tflops: 3, memory_gb: 1}]"]).heterogeneity
    edge, phone = client_profiles(custom, 2, seed=0)
    assert (edge.name, edge.tflops, edge.memory_gb) == ("edge", 3.0, 1.0) and phone == TIERS["phone"]
    logn = load_config(None, ["heterogeneity.profile=lognormal", "heterogeneity.spread=0"]).heterogeneity
    assert client_profiles(logn, 3, seed=0) == [TIERS["laptop"]] * 3


@pytest.mark.parametrize("overrides, message", [
    (["heterogeneity.profile=list"], "one tier name per client"),
    (["heterogeneity.devices=[phone,tablet,laptop]"], "unknown tier 'tablet'"),
    (["heterogeneity.profile=zoo"], "heterogeneity.profile: must be one of"),
    (["split.policy=greedy"], "split.policy: must be one of"),
    (["federation.method=swarm"], "federation.method: must be one of"),
    (["lora.r_cut=32"], "lora.r_cut: the cut-layer rank must not exceed"),
    (["split.policy=splitft", "split.cut_min=3", "split.cut=2"], "reference cut 2 must lie in"),
])
def test_bad_heterogeneity_and_split_settings_say_how_to_fix_them(overrides, message):
    from splitft.build import load
    from splitft.config import ConfigError
    from splitft.sim.runner import sim_problems

    with pytest.raises(ConfigError, match=message):
        load(None, overrides, sim_problems)


def test_the_progress_eta_counts_training_steps_not_evaluations():
    import io

    from tqdm import tqdm

    from splitft.sim.runner import _progress_phases

    now = [0.0]
    bar = tqdm(total=100, file=io.StringIO(), mininterval=0, miniters=1)
    bar._time, bar.start_t, bar.last_print_t = (lambda: now[0]), 0.0, 0.0
    phases = _progress_phases(bar, "split steps")
    for round_ in range(3):
        phases("evaluate", round_ - 1)
        assert bar.desc.startswith("evaluating")
        now[0] += 60.0  # a long evaluation (the pretrained one, then after each round)
        phases("train", round_ - 1)
        for _ in range(5):
            now[0] += 2.0
            bar.update(1)
    assert bar.desc == "split steps" and bar.format_dict["rate"] == pytest.approx(0.5)
    assert bar.format_dict["elapsed"] == pytest.approx(30.0), "15 steps of 2 s; the evaluations are left out"


def test_plan_order_is_charged_lockstep_turns():
    class D:
        def __init__(self, tflops):
            self.tflops, self.up_mbps, self.down_mbps, self.latency_ms = tflops, 1e9, 1e9, 0.0

    slow, fast = StepCost(0, 2e12, 1e9), StepCost(1, 2e11, 1e9)
    devices, server = {0: D(1.0), 1: D(1.0)}, D(1000.0)
    steps = [slow, fast, slow, fast]  # the plan's turns
    plan = round_time(steps, devices, server, {}, {}, order="plan")
    fifo = round_time(steps, devices, server, {}, {}, order="arrival")
    assert fifo[1] == pytest.approx(0.4, abs=1e-3), "alone, the fast client needs 2 x 0.2 s"
    assert plan[1] == pytest.approx(3.1, abs=1e-3), "in turns it waits for each slow step ahead of it"


def test_a_u_shaped_step_holds_the_server_through_the_clients_tail():
    # fwd 1 s + up 1 s (activations) -> server 1 s -> hidden down 1 s, tail 1 s, grad_hidden up 1 s (server held)
    # -> grad_activations down 0.5 s -> bwd 1 s: 7.5 s; the second client, arrived at 2 s, is served from 6 s
    step = dict(client_flops=2e12, server_flops=2e12, bytes_up=2_000_000, bytes_down=1_500_000, tail_flops=1e12,
                hidden_down=1_000_000, grad_hidden_up=1_000_000)
    t = round_time([StepCost(0, **step), StepCost(1, **step)], {0: DEV, 1: DEV}, SERVER, {}, {})
    assert t == {0: pytest.approx(7.5), 1: pytest.approx(7.5 + 4.0)}
