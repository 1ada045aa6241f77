"""The same federation over both transports: in-process (`splitft simulate`) and gRPC (server + clients in
threads of this process, the real `serve` / `join` code). Same seed -> bit-identical weights and the same
payload bytes; a broken connection is resumed without applying a step twice; a vanished client is dropped and
the run completes over the survivors."""

import json
import socket
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from splitft.deploy import join as join_module
from splitft.deploy.join import join
from splitft.deploy.launch import free_port
from splitft.deploy.serve import serve
from splitft.records import read_records
from splitft.sim.runner import run_simulation
from splitft.transport import grpc_client as wire
from tests.conftest import tiny_config

pytestmark = pytest.mark.multiproc
KINDS = ("activations_up", "labels_up", "grad_activations_down", "lora_up")
TOKEN = "t" * 32


def _config(tmp_path, name, *extra):
    return tiny_config(tmp_path / name, "llama", "federation.n_clients=3", "transport.chunk_kb=16", *extra)


def _deploy(tmp_path, monkeypatch, *extra):
    """serve() and three join()s in threads; returns (out_dir, {client: report or exception})."""
    cfg = _config(tmp_path, "grpc", *extra)
    (tmp_path / "tokens.txt").write_text((TOKEN + "\n") * 3)
    port = free_port()
    cfg.transport.address = f"127.0.0.1:{port}"
    cfg.server.tokens_file = str(tmp_path / "tokens.txt")
    monkeypatch.setenv(cfg.client.token_env, TOKEN)
    lock, build = threading.Lock(), join_module.open_model

    def one_at_a_time(c, *a):  # model init seeds torch's global RNG: threads must not interleave there (processes
        with lock:         # have one RNG each)
            return build(c, *a)

    monkeypatch.setattr(join_module, "open_model", one_at_a_time)
    errors: list[BaseException] = []
    server = threading.Thread(target=lambda: _catch(errors, serve, cfg), daemon=True)
    server.start()
    end = time.monotonic() + 120
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    results: dict[int, object] = {}
    address = cfg.transport.address
    clients = [threading.Thread(target=lambda i=i: results.__setitem__(i, _catch([], join, cfg, i, address, True)),
                                daemon=True) for i in range(3)]
    for t in clients:
        t.start()
    for t in [*clients, server]:
        t.join(timeout=300)
        assert not t.is_alive(), "the deployment hung"
    assert not errors, errors
    return tmp_path / "grpc" / "run", results


def _catch(errors, fn, *args):
    try:
        return fn(*args)
    except BaseException as e:  # noqa: BLE001 - reported by the test
        errors.append(e)
        return e


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inproc")
    run_simulation(_config(tmp, "sim"))
    out = tmp / "sim" / "run"
    return load_file(out / "adapter" / "adapter_model.safetensors"), read_records(out / "metrics.jsonl")


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_both_transports_end_with_the_same_weights_and_bytes(simulated, tmp_path, monkeypatch):
    out, reports = _deploy(tmp_path, monkeypatch)
    assert _same_weights(simulated[0], load_file(out / "adapter" / "adapter_model.safetensors"))
    totals = [r for r in simulated[1] if r["kind"] == "round"][-1]["bytes"]
    server_rounds = read_records(out / "metrics.jsonl", "round")
    for k in KINDS:
        assert sum(reports[i]["bytes"][k] for i in range(3)) == totals[k], k
        assert server_rounds[-1]["bytes"][k] == totals[k], f"the server counts {k} as the clients do"
    sim_rounds = [r for r in simulated[1] if r["kind"] == "round" and r["round"] >= 0]
    assert [r["bytes_up"] for r in server_rounds] == [r["bytes_up"] for r in sim_rounds]
    assert all(reports[i]["reconnects"] == 0 and reports[i]["dropped_rounds"] == [] for i in range(3))


@pytest.mark.parametrize("codecs", [("codec.up=int8_token", "codec.down=int8_token"),
                                    ("codec.up=int4_group", "codec.down=int8_token",
                                     "codec.entropy=zstd")], ids=["int8", "int4_group-int8+zstd"])
def test_a_lossy_codec_gives_the_same_weights_and_encoded_bytes_over_both_transports(simulated, tmp_path,
                                                                                   monkeypatch, codecs):
    run_simulation(_config(tmp_path, "sim", *codecs))
    sim_out = tmp_path / "sim" / "run"
    out, reports = _deploy(tmp_path, monkeypatch, *codecs)
    sim_weights = load_file(sim_out / "adapter" / "adapter_model.safetensors")
    assert _same_weights(sim_weights, load_file(out / "adapter" / "adapter_model.safetensors"))
    assert not _same_weights(sim_weights, simulated[0]), "int8 must change the training, if only slightly"
    totals = read_records(sim_out / "metrics.jsonl", "round")[-1]["bytes"]
    plain = [r for r in simulated[1] if r["kind"] == "round"][-1]["bytes"]
    for k in KINDS:
        assert sum(reports[i]["bytes"][k] for i in range(3)) == totals[k], k
    server = read_records(out / "metrics.jsonl", "round")[-1]["bytes"]
    assert all(server[k] == totals[k] for k in KINDS), "the server counts compressed bytes as the clients do"
    hidden = 32  # tiny models: 1 byte per element + a 4-byte scale per token, instead of 4 bytes per element
    if codecs[0] == "codec.up=int8_token":  # int8 both ways
        assert totals["activations_up"] == plain["activations_up"] // 4 * (hidden + 4) // hidden
    else:  # 4 bits + a bfloat16 scale per 32 values, then zstd: under 4.5 / 32 of float32
        assert totals["activations_up"] < plain["activations_up"] * 4.5 / 32
        assert totals["grad_activations_down"] < plain["grad_activations_down"] * (hidden + 4) / hidden / 4


def _lose_one_reply(monkeypatch, kind):
    """Client 1's first training message of `kind` in round 1 reaches the server, whose reply is lost with the
    connection; returns the list that records the step it happened at."""
    real, broke = wire.GrpcTransport._exchange, []

    def lossy(self, env):
        if self.client_id == 1 and env.kind == kind and env.train and env.round == 1 and not broke:
            broke.append(env.step)
            self._send(env)
            self.conn.inbox.get(timeout=60)  # the reply started: the server has applied the step
            raise wire._Broken("injected: connection lost before the reply was read")
        return real(self, env)

    monkeypatch.setattr(wire.GrpcTransport, "_exchange", lossy)
    return broke


def test_a_lost_reply_is_resent_and_answered_from_cache_not_applied_twice(simulated, tmp_path, monkeypatch):
    broke = _lose_one_reply(monkeypatch, wire.Envelope.STEP)
    out, reports = _deploy(tmp_path, monkeypatch)
    assert broke and reports[1]["reconnects"] == 1
    assert _same_weights(simulated[0], load_file(out / "adapter" / "adapter_model.safetensors"))
    log = [r.get("message", "") for r in read_records(out / "metrics.jsonl")]
    assert any("answered from cache" in m for m in log), "the resend must hit the cache"


class _Vanished(Exception):
    pass


def test_joined_server_steps_give_the_same_weights_over_both_transports(simulated, tmp_path, monkeypatch):
    """federation.server_batch=4 under plan order: the deployed coordinator joins the same turns the simulation
    joins, so both end bit-identical; a reply lost from a joined step is answered from the cache."""
    joined = "federation.server_batch=4"
    run_simulation(_config(tmp_path, "sim", joined))
    sim_weights = load_file(tmp_path / "sim" / "run" / "adapter" / "adapter_model.safetensors")
    broke = _lose_one_reply(monkeypatch, wire.Envelope.STEP)
    out, reports = _deploy(tmp_path, monkeypatch, joined)
    assert broke and reports[1]["reconnects"] == 1
    assert _same_weights(sim_weights, load_file(out / "adapter" / "adapter_model.safetensors"))
    assert not _same_weights(sim_weights, simulated[0]), "one AdamW step per 3 client steps is another training"
    sim = read_records(tmp_path / "sim" / "run" / "metrics.jsonl")
    assert {r["server_step"] for r in sim if r["kind"] == "step" and r["round"] == 0} == {0, 3}
    served = [r["server_steps"] for r in read_records(out / "metrics.jsonl") if r["kind"] == "round"]
    assert served == [r["server_steps"] for r in sim if r["kind"] == "round" and r["round"] >= 0] == [2, 2], \
        "3 clients x 2 steps a round: 2 server steps in both runtimes"


def test_a_vanished_client_is_dropped_and_the_run_completes(tmp_path, monkeypatch):
    real = wire.GrpcTransport._exchange

    def dies(self, env):
        if self.client_id == 2 and env.kind == wire.Envelope.STEP and env.round == 1 and env.step == 1:
            self.stopped.set()  # no more heartbeats, no goodbye: as if the process were killed
            self.conn.close()
            raise _Vanished()
        return real(self, env)

    monkeypatch.setattr(wire.GrpcTransport, "_exchange", dies)
    out, reports = _deploy(tmp_path, monkeypatch, "client.heartbeat_s=0.2", "server.dead_after_s=2")
    assert isinstance(reports[2], _Vanished)
    summary = json.loads((out / "server.json").read_text())
    assert summary["rounds"] == 2 and summary["dropped_by_round"][0] == {}
    assert "silent" in summary["dropped_by_round"][1]["2"]
    rounds = read_records(out / "metrics.jsonl", "round")
    assert rounds[1]["clients"] == [0, 1], "round 1 aggregates over the survivors"
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and reports[0]["eval_ppl"] > 1


U = ("split.shape=u", "split.tail=1")
U_KINDS = (*KINDS, "hidden_down", "grad_hidden_up")


def test_a_u_shaped_split_gives_the_same_weights_and_bytes_over_both_transports(simulated, tmp_path, monkeypatch):
    """Labels stay on the client: the in-process and gRPC runs of a U-shaped split agree bit for bit, every
    step crossed four times, and a lost backward reply is answered from the cache, not applied twice."""
    run_simulation(_config(tmp_path, "sim", *U))
    sim_out = tmp_path / "sim" / "run"
    broke = _lose_one_reply(monkeypatch, wire.Envelope.BACKWARD)
    out, reports = _deploy(tmp_path, monkeypatch, *U)
    sim_weights = load_file(sim_out / "adapter" / "adapter_model.safetensors")
    assert _same_weights(sim_weights, load_file(out / "adapter" / "adapter_model.safetensors"))
    assert sim_weights.keys() == simulated[0].keys()
    totals = read_records(sim_out / "metrics.jsonl", "round")[-1]["bytes"]
    for k in U_KINDS:  # the clients count what they sent and received once, resend or not
        assert sum(reports[i]["bytes"][k] for i in range(3)) == totals[k], k
    assert totals["hidden_down"] == totals["grad_hidden_up"] == totals["activations_up"] > 0
    plain = [r for r in simulated[1] if r["kind"] == "round"][-1]["bytes"]
    assert totals["labels_up"] * 5 == plain["labels_up"], "only the uint8 mask goes up, no int32 labels"
    assert broke and reports[1]["reconnects"] == 1
    log = [r.get("message", "") for r in read_records(out / "metrics.jsonl")]
    assert any("backward of step" in m and "answered from cache" in m for m in log)


def test_grad_hidden_defenses_give_the_same_weights_over_both_transports(tmp_path, monkeypatch):
    """privacy.grad_clip and grad_noise are the client's: each client draws its noise from its own generator, so a
    deployment of a defended U-shaped split ends bit-identical to its simulation."""
    defended = (*U, "privacy.grad_clip=1", "privacy.grad_noise=2", "privacy.grad_keep=0.5")
    run_simulation(_config(tmp_path, "sim", *defended))
    out, _ = _deploy(tmp_path, monkeypatch, *defended)
    sim_weights = load_file(tmp_path / "sim" / "run" / "adapter" / "adapter_model.safetensors")
    assert _same_weights(sim_weights, load_file(out / "adapter" / "adapter_model.safetensors"))


def test_a_privacy_floor_binds_the_deployed_cuts_as_the_simulated_ones(tmp_path, monkeypatch):
    """split.privacy_floor is read by whoever decides cuts: the deployed server's placement gives the same cuts,
    the same cut_decision record and the same weights as the simulation."""
    table = tmp_path / "privacy.json"
    table.write_text(json.dumps({"model": "tiny:llama", "inversion": [
        {"cut": 1, "attack": "learned", "noise": 0.0, "recovery": 0.9},
        {"cut": 2, "attack": "learned", "noise": 0.0, "recovery": 0.1}]}))
    floor = ("split.cut=1", "split.privacy_floor=0.5", f"split.privacy_table={table}")
    run_simulation(_config(tmp_path, "sim", *floor))
    out, _ = _deploy(tmp_path, monkeypatch, *floor)
    decisions = [read_records(run / "metrics.jsonl", "cut_decision")
                 for run in (tmp_path / "sim" / "run", out)]
    for records in decisions:
        assert records and all(set(r["cuts"].values()) == {2} and r["privacy_floor_cut"] == 2
                               and r["at_privacy_floor"] == ["0", "1", "2"] for r in records), records
    sim_weights = load_file(tmp_path / "sim" / "run" / "adapter" / "adapter_model.safetensors")
    assert _same_weights(sim_weights, load_file(out / "adapter" / "adapter_model.safetensors"))
