"""Deployment over gRPC through the real CLI: `splitft launch` ends with exactly the LoRA weights of
`splitft simulate` for the same config and seed, counts the same payload bytes, and refuses bad tokens."""

import contextlib
import json
import os
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from splitft.deploy.launch import free_port
from splitft.records import read_records
from tests.conftest import write_jsonl
from tests.e2e.test_cli import TINY, splitft
from tests.unit.test_track import read_events

pytestmark = pytest.mark.multiproc
DEPLOY = [o for o in TINY if not o.startswith("federation.n_clients")] + [
    "federation.n_clients=3", "split.policy=fixed", "heterogeneity.profile=homogeneous", "transport.chunk_kb=16"]
KINDS = ("activations_up", "labels_up", "grad_activations_down", "lora_up", "lora_down")


@pytest.mark.parametrize("joined", [[], ["federation.server_batch=4", "train.schedule=cosine", "train.warmup_steps=1"]],
                         ids=["one-by-one", "server_batch=4+cosine"])
def test_launch_matches_simulate_weights_and_bytes(tmp_path, joined):
    sim, dep = tmp_path / "sim", tmp_path / "dep"
    assert splitft("simulate", *DEPLOY, *joined, f"metrics.out_dir={sim}").returncode == 0
    res = splitft("launch", "--clients", "3", *DEPLOY, *joined, f"metrics.out_dir={dep}",
                  "metrics.report_to=tensorboard")
    assert res.returncode == 0, res.stderr + "".join(p.read_text() for p in (dep / "logs").glob("*.log"))
    a = load_file(sim / "adapter" / "adapter_model.safetensors")
    b = load_file(dep / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "gRPC run must end bit-identical"
    reports = [json.loads((dep / f"client_{i}.json").read_text()) for i in range(3)]
    sim_rounds = read_records(sim / "metrics.jsonl", "round")
    totals = sim_rounds[-1]["bytes"]
    final_pull = json.loads((sim / "summary.json").read_text())["clients"]["0"]["lora_down"] // 2  # 2 rounds
    for k in KINDS:  # payload accounting is the same in both runtimes, plus every client's final pull (to evaluate)
        assert sum(r["bytes"][k] for r in reports) == totals[k] + (3 * final_pull if k == "lora_down" else 0), k
    assert reports[0]["eval_ppl"] == pytest.approx(sim_rounds[-1]["eval_ppl"], rel=1e-9)
    summary = json.loads((dep / "summary.json").read_text())  # dealt: every client evaluates the simulation's slice
    sim_summary = json.loads((sim / "summary.json").read_text())
    assert summary["eval_ppl_by_round"] == pytest.approx(sim_summary["eval_ppl_by_round"], rel=1e-6)
    events = read_events(dep / "tensorboard")  # the server reports the whole federation
    assert events["eval/ppl"] == pytest.approx({int(r): p for r, p in summary["eval_ppl_by_round"].items()})
    assert events["train/lr"] == pytest.approx({r["round"]: r["lr"] for r in sim_rounds if r["round"] >= 0})
    payload = sum(sum(r["bytes"].values()) for r in reports)
    wire = sum(r["wire_up"] + r["wire_down"] for r in reports)
    assert payload < wire < payload * 1.15 + 50_000, "envelope overhead is small"
    assert oct((dep / "tokens.txt").stat().st_mode)[-3:] == "600"


def test_launch_matches_simulate_under_bf16(tmp_path, monkeypatch):
    """bf16 compute and storage, the chunked loss, bf16 on the wire (lossless for bf16 activations): the
    deployment still ends bit-identical to the simulation, and says what it computed in."""
    from splitft.precision import EMULATED_BF16

    monkeypatch.setenv(EMULATED_BF16, "1")  # bf16 on any CI machine (emulated where the CPU lacks it)
    bf16 = [*DEPLOY, "train.compute_dtype=bfloat16", "model.dtype=bfloat16", "train.loss_chunk_tokens=64",
            "codec.up=bf16", "codec.down=bf16", "federation.rounds=2"]
    sim, dep = tmp_path / "sim", tmp_path / "dep"
    res = splitft("simulate", *bf16, f"metrics.out_dir={sim}")
    assert res.returncode == 0 and "computing in bfloat16 (bfloat16), frozen weights stored in bfloat16" in res.stderr
    res = splitft("launch", "--clients", "3", *bf16, f"metrics.out_dir={dep}")
    logs = "".join(p.read_text() for p in (dep / "logs").glob("*.log"))
    assert res.returncode == 0, res.stderr + logs
    assert "computing in bfloat16" in logs
    a = load_file(sim / "adapter" / "adapter_model.safetensors")
    b = load_file(dep / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "gRPC run must end bit-identical"
    summary = json.loads((dep / "summary.json").read_text())
    sim_summary = json.loads((sim / "summary.json").read_text())
    assert summary["eval_ppl_by_round"] == pytest.approx(sim_summary["eval_ppl_by_round"], rel=1e-6)
    setup = read_records(sim / "metrics.jsonl", "setup")[0]
    assert setup["precision"] == {"compute_dtype": "bfloat16", "storage_dtype": "bfloat16", "why": "bfloat16"}


@contextlib.contextmanager
def two_client_server(tmp_path):
    """A server for 2 clients (tokens "a"*32, "b"*32) listening on loopback; yields (its args, the client's args:
    the same settings, client 0) and terminates it after."""
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("a" * 32 + "\n" + "b" * 32 + "\n")
    addr = f"127.0.0.1:{free_port()}"
    common = [*[o for o in DEPLOY if "n_clients" not in o], "federation.n_clients=2", f"transport.address={addr}"]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "splitft.cli", "server", *common,
                               f"server.tokens_file={tokens}", f"metrics.out_dir={tmp_path / 'srv'}"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "listening" not in (tmp_path / "server.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        yield server, [*common, "--client-id", "0", f"metrics.out_dir={tmp_path / 'c0'}"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def _client(args, token):
    env = {**os.environ, "SPLITFT_TOKEN": token, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "splitft.cli", "client", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_a_client_with_a_bad_token_is_refused(tmp_path):
    with two_client_server(tmp_path) as (server, client):
        res = _client(client, "c" * 32)
        assert res.returncode == 2 and "UNAUTHENTICATED" in res.stderr, res.stderr
        assert "refused a session" in (tmp_path / "server.log").read_text()
        assert server.poll() is None, "the server keeps running after refusing a client"


def test_a_client_with_another_config_or_model_is_refused_before_training(tmp_path):
    """The handshake: a client whose settings or model differ from the server's exits 2 with one line naming
    each differing setting and both values, before any step; the server keeps serving."""
    with two_client_server(tmp_path) as (server, client):
        for extra, says in [("federation.local_steps=5", "federation.local_steps: the server has 2, this client 5"),
                            ("model.source=tiny:qwen2", "model: the server runs tiny:llama"),
                            ("split.shape=u", "split.shape: the server has 'vanilla', this client 'u'")]:
            res = _client([*client, extra], "a" * 32)
            lines = [x for x in res.stderr.splitlines() if x.startswith("splitft: error:")]
            assert res.returncode == 2 and len(lines) == 1 and says in lines[0], res.stderr
            assert "Traceback" not in res.stderr and "round 0:" not in res.stderr
        assert server.poll() is None, "the server keeps running after refusing a client"


def test_server_without_tokens_is_a_clear_error(tmp_path):
    res = splitft("server", *DEPLOY, f"metrics.out_dir={tmp_path / 's'}")
    assert res.returncode == 2 and "server.tokens_file" in res.stderr


def test_a_killed_client_process_is_dropped_and_the_run_completes(tmp_path):
    """SIGKILL one client process mid-run: the server drops it (silent past server.dead_after_s), aggregates
    every later round over the survivors, finishes and saves the adapter."""
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("".join(f"{i}" * 32 + "\n" for i in range(3)))
    addr = f"127.0.0.1:{free_port()}"
    common = [*DEPLOY, "federation.rounds=10", f"transport.address={addr}", "client.heartbeat_s=0.2",
              "server.dead_after_s=2", f"metrics.out_dir={tmp_path / 'run'}"]
    logs = {name: tmp_path / f"{name}.log" for name in ("server", "c0", "c1", "c2")}

    def spawn(args, name, env=None):
        with logs[name].open("w") as f:
            env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
            return subprocess.Popen([sys.executable, "-m", "splitft.cli", *args, *common], stdout=f,
                                    stderr=subprocess.STDOUT, env=env)

    server = spawn(["server", f"server.tokens_file={tokens}"], "server")
    procs = [server]
    try:
        deadline = time.monotonic() + 120
        while "listening" not in logs["server"].read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        clients = [spawn(["client", "--client-id", str(i)], f"c{i}", {"SPLITFT_TOKEN": f"{i}" * 32}) for i in range(3)]
        procs += clients
        while "round 0:" not in logs["c2"].read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        clients[2].kill()
        assert server.wait(timeout=240) == 0, logs["server"].read_text()
        assert clients[0].wait(timeout=60) == 0 and clients[1].wait(timeout=60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    summary = json.loads((tmp_path / "run" / "server.json").read_text())
    dropped = [r for r, d in enumerate(summary["dropped_by_round"]) if "2" in d]
    assert summary["rounds"] == 10 and dropped and dropped == list(range(dropped[0], 10)), summary
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "client_0.json").read_text())["eval_ppl"] > 1


def _rows(n: int, word: str) -> list[dict]:
    return [{"prompt": f"Say {word} {i}.", "response": f"{word} " * (1 + i % 5)} for i in range(n)]


def test_clients_train_on_their_own_files_with_measured_adaptive_cuts(tmp_path):
    """Three clients, three private files of different sizes, SplitFT's policy deciding from what they measure:
    each trains on its own rows only, the policy moves a cut, the server's run directory is a run `report`
    reads, and its adapter loads in PEFT. Client 2's file holds 10 rows that fit no format: dropped, counted in its
    JSON, and its log's data line is a warning (11% of its rows)."""
    sizes = {0: 30, 1: 50, 2: 80}
    words = zip(sizes.items(), ["fie", "hark", "ay"], strict=True)
    files = [write_jsonl(tmp_path / f"c{i}.jsonl", _rows(n, w)) for (i, n), w in words]
    write_jsonl(files[2], _rows(80, "ay") + [{"prompt": ["not", "text"], "response": "x"}] * 10)
    dep = tmp_path / "dep"
    res = splitft("launch", "--clients", "3", "--client-data", ",".join(map(str, files)), *DEPLOY,
                  "split.policy=splitft", "split.gamma=2", "split.period=1", "federation.rounds=3",
                  f"metrics.out_dir={dep}")
    assert res.returncode == 0, res.stderr + "".join(p.read_text() for p in (dep / "logs").glob("*.log"))
    for i, n in sizes.items():
        r = json.loads((dep / f"client_{i}.json").read_text())
        held = max(1, min(8, int(n * 0.1)))  # data.eval_fraction 0.1, data.max_eval_samples 8 (TINY)
        assert (r["data"], r["train_samples"], r["eval_samples"]) == (str(files[i]), n - held, held), r
        assert r["peak_rss_gb"] > 0 and r["measured"]["source"] == "measured"
        bad = 10 if i == 2 else 0
        dropped = {"bad_row": bad, "no_target": 0, "empty": 0}
        assert (r["format"], r["rows"], r["dropped"]) == ("prompt_response", n + bad, dropped), r
    log = (dep / "logs" / "client_2.log").read_text()
    assert "c2.jsonl row 81: column 'prompt' holds list, not text" in log
    assert "warning: data: 90 rows of" in log and "11% of the rows will not train" in log
    decisions = read_records(dep / "metrics.jsonl", "cut_decision")
    assert [d["round"] for d in decisions] == [0, 1, 2]
    assert any(d["measured"]["0"].get("s_per_block_token") for d in decisions[1:]), "later rounds use measurements"
    cuts = [d["cuts"] for d in decisions]
    assert any(a != b for a, b in zip(cuts, cuts[1:], strict=True)), f"the policy never moved a cut: {cuts}"
    summary = json.loads((dep / "summary.json").read_text())
    assert summary["deployed"] and set(summary["eval_ppl_by_round"]) == {"-1", "0", "1", "2"}
    assert splitft("report", str(dep), "--out", str(tmp_path / "rep")).returncode == 0
    from peft import PeftModel

    from splitft.model.loader import load
    PeftModel.from_pretrained(load("tiny:llama").model, str(dep / "adapter"))


def test_makespan_plans_deployed_from_the_clients_and_the_servers_measurements(tmp_path):
    """split.policy=makespan deployed: the server builds the simulation's round-cost model and plans each round
    from what the clients measured and from its own served steps (round 0: the config's server_tflops)."""
    dep = tmp_path / "dep"
    res = splitft("launch", "--clients", "3", *DEPLOY, "split.policy=makespan", "split.period=1",
                  "federation.rounds=3", "federation.server_batch=3", f"metrics.out_dir={dep}")
    assert res.returncode == 0, res.stderr + "".join(p.read_text() for p in (dep / "logs").glob("*.log"))
    decisions = read_records(dep / "metrics.jsonl", "cut_decision")
    assert [d["round"] for d in decisions] == [0, 1, 2] and all(d["policy"] == "makespan" for d in decisions)
    assert decisions[0]["server"]["source"].startswith("heterogeneity.server_tflops")
    for d in decisions[1:]:
        assert d["server"]["source"].startswith("measured over") and d["server"]["tflops"] > 0
        assert all(m.get("s_per_block_token") for m in d["measured"].values()), "clients' measurements"
    assert json.loads((dep / "summary.json").read_text())["rounds"] == 3


@pytest.mark.parametrize("joined", [[], ["federation.server_batch=3", "federation.server_batch_wait_ms=20"]],
                         ids=["one-by-one", "server_batch=3"])
def test_launch_serves_by_arrival_with_a_time_budget(tmp_path, joined):
    """federation.order=arrival + round_budget=time deployed: round 0 runs local_steps (no pace reported yet),
    later rounds run until the server's budget (from the clients' reported pace), at most the cap; done. With
    joined server steps too: a server step takes the steps waiting (or arriving within 20 ms), none is lost."""
    out = tmp_path / "run"
    res = splitft("launch", "--clients", "3", *DEPLOY, "federation.rounds=3", "federation.order=arrival",
                  "federation.round_budget=time", "federation.max_steps_factor=3", *joined, f"metrics.out_dir={out}")
    assert res.returncode == 0, res.stderr + "".join(p.read_text() for p in (out / "logs").glob("*.log"))
    reports = [json.loads((out / f"client_{i}.json").read_text()) for i in range(3)]
    steps = [len(r["losses"]) for r in reports]
    assert all(2 + 2 * 1 <= n <= 2 + 2 * 6 for n in steps), steps  # round 0: 2 each; then 1..6 per round
    server = json.loads((out / "server.json").read_text())
    for r, by_client in enumerate(server["steps_by_round"]):  # every step applied once, none lost
        assert by_client == {str(i): reports[i]["steps_by_round"][str(r)] for i in range(3)}, r
    per_round = zip(server["server_steps_by_round"], server["steps_by_round"], strict=True)
    assert all(0 < s <= sum(b.values()) for s, b in per_round)
    assert all(r["step_wall_s"]["n"] == len(r["losses"]) for r in reports)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["final_eval_ppl"] < summary["initial_eval_ppl"]


@pytest.mark.parametrize("shape", ["vanilla", "u"])
def test_an_emulated_slow_client_measures_at_least_its_profiles_step_time(tmp_path, shape):
    """launch --emulate: client 0 is a device 10x slower than client 1; each paces its steps to its profile, so
    the compute it measures and reports per block and token is at least what the profile allows. The server paces
    every training step to heterogeneity.server_tflops (under U both halves of each)."""
    from splitft.cuts import cost_model_of
    from splitft.model.families import family_for
    from splitft.model.loader import load
    from splitft.model.split import Compute

    tiers = ("heterogeneity.tiers=[{name: slow, tflops: 0.00002, latency_ms: 5, up_mbps: 100, down_mbps: 100},"
             " {name: fast, tflops: 0.0002, latency_ms: 5, up_mbps: 100, down_mbps: 100}]")
    out = tmp_path / "run"
    res = splitft("launch", "--clients", "2", "--emulate", *[o for o in DEPLOY if "n_clients" not in o],
                  "federation.rounds=1", tiers, "heterogeneity.profile=list", "heterogeneity.devices=[slow, fast]",
                  "heterogeneity.server_tflops=0.0002", f"split.shape={shape}", f"metrics.out_dir={out}")
    assert res.returncode == 0, res.stderr + "".join(p.read_text() for p in (out / "logs").glob("*.log"))
    cost = cost_model_of(load("tiny:llama").model, family_for("llama"), Compute())  # fp32, no recompute
    for cid, tflops in [(0, 0.00002), (1, 0.0002)]:
        report = json.loads((out / f"client_{cid}.json").read_text())
        floor = 4 * min(cost.block_params) / (tflops * 1e12)  # a block's training FLOPs per token >= 4 x params
        assert report["measured"]["s_per_block_token"] >= floor, (cid, report["measured"], floor)
        assert report["emulation"]["device"] == ["slow", "fast"][cid]
        assert report["emulation"]["paced_s"] >= report["emulation"]["real_s"]
        assert report["emulation"]["slower_than_profile"] <= report["emulation"]["steps"]  # loopback under load
    assert "emulating a slow" in (out / "logs" / "client_0.log").read_text()
    paced = json.loads((out / "server.json").read_text())["emulation"]
    steps = sum(json.loads((out / f"client_{cid}.json").read_text())["emulation"]["steps"] for cid in (0, 1))
    assert paced["device"] == "server" and paced["steps"] == steps and paced["paced_s"] > paced["real_s"]
