"""Nothing lost, nobody stuck: a server killed mid-round resumes from its round checkpoint and the run ends
bit-identical to an uninterrupted one; a killed client restarted with its id rejoins at the current round."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from splitft.deploy.launch import free_port
from tests.e2e.test_cli import splitft
from tests.e2e.test_deploy import DEPLOY

pytestmark = pytest.mark.multiproc
RECOVER = [*DEPLOY, "federation.rounds=4", "federation.local_steps=3", "client.heartbeat_s=0.2",
           "client.reconnect_s=120"]


class Parties:
    """A server and its clients as separate processes of the real CLI, each with its own log."""

    def __init__(self, tmp_path: Path, *extra: str):
        self.tmp, self.procs, self.logs = tmp_path, {}, {}
        self.tokens = tmp_path / "tokens.txt"
        self.tokens.write_text("".join(f"{i}" * 32 + "\n" for i in range(3)))
        self.run = tmp_path / "run"
        self.common = [*RECOVER, *extra, f"transport.address=127.0.0.1:{free_port()}",
                       f"metrics.out_dir={self.run}"]

    def spawn(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        self.logs[name] = self.tmp / f"{name}.{len([n for n in self.logs if n.startswith(name)])}.log"
        with self.logs[name].open("w") as f:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "splitft.cli", *args], stdout=f,
                                                stderr=subprocess.STDOUT,
                                                env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
        return self.procs[name]

    def server(self, *args: str) -> subprocess.Popen:
        p = self.spawn("server", list(args) or ["server", *self.common, f"server.tokens_file={self.tokens}"])
        self.wait_for("server", "listening")
        return p

    def client(self, i: int) -> subprocess.Popen:
        return self.spawn(f"c{i}", ["client", *self.common, "--client-id", str(i), "--dealt"],
                          {"SPLITFT_TOKEN": f"{i}" * 32})

    def text(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def wait_for(self, name: str, what: str, timeout: float = 180) -> None:
        end = time.monotonic() + timeout
        while what not in self.text(name):
            assert time.monotonic() < end and self.procs[name].poll() is None, self.text(name)
            time.sleep(0.05)

    def all_logs(self) -> str:
        return "".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.tmp.glob("*.log")))

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()


@pytest.mark.parametrize("joined", [[], ["federation.server_batch=4"]], ids=["one-by-one", "server_batch=4"])
def test_a_server_killed_mid_round_resumes_and_ends_bit_identical(tmp_path, joined):
    sim = tmp_path / "sim"
    assert splitft("simulate", *RECOVER, *joined, f"metrics.out_dir={sim}").returncode == 0
    parties = Parties(tmp_path, *joined)
    try:
        parties.server()
        clients = [parties.client(i) for i in range(3)]
        latest = parties.run / "checkpoints" / "latest"
        end = time.monotonic() + 180
        while not (latest.exists() and latest.read_text().strip() == "round_1"):
            assert time.monotonic() < end, parties.all_logs()
            time.sleep(0.01)
        time.sleep(0.3)  # round 2 under way: pulls, evaluations, steps
        os.kill(parties.procs["server"].pid, signal.SIGKILL)
        parties.procs["server"].wait()
        time.sleep(1.0)  # the clients notice and keep reconnecting
        resumed = parties.server("server", "--resume", str(parties.run))
        assert resumed.wait(timeout=240) == 0, parties.all_logs()
        assert all(c.wait(timeout=60) == 0 for c in clients), parties.all_logs()
    finally:
        parties.stop()
    logs = parties.all_logs()
    assert "resumed" in parties.text("server") and "running round 2 again" in logs, logs
    a = load_file(sim / "adapter" / "adapter_model.safetensors")
    b = load_file(parties.run / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "must end as the uninterrupted run"
    summary = json.loads((parties.run / "summary.json").read_text())
    assert summary["rounds"] == 4 and sorted(summary["cuts_by_round"]) == ["0", "1", "2", "3"]
    sim_summary = json.loads((sim / "summary.json").read_text())
    assert summary["eval_ppl_by_round"] == pytest.approx(sim_summary["eval_ppl_by_round"], rel=1e-6)


def test_a_killed_client_restarted_with_its_id_rejoins_at_the_current_round(tmp_path):
    parties = Parties(tmp_path, "federation.rounds=24", "server.dead_after_s=2")  # outlasts a restart
    try:
        server = parties.server()
        clients = [parties.client(i) for i in range(3)]
        parties.wait_for("c2", "round 1:")
        os.kill(clients[2].pid, signal.SIGKILL)
        clients[2].wait()
        again = parties.client(2)
        assert server.wait(timeout=240) == 0, parties.all_logs()
        assert again.wait(timeout=60) == 0 and clients[0].wait(timeout=60) == 0, parties.all_logs()
    finally:
        parties.stop()
    rejoined = parties.text("c2")
    assert "rejoining at round" in rejoined and "from its checkpoint of round" in rejoined, rejoined
    start = int(rejoined.split("rejoining at round ")[1].split()[0])
    server_json = json.loads((parties.run / "server.json").read_text())
    later = server_json["dropped_by_round"][start:]
    assert start < 24 and all("2" not in d for d in later), server_json  # back in every round from there on
    assert json.loads((parties.run / "client_2.json").read_text())["eval_ppl"] > 1


def test_an_interrupted_launch_stops_its_server_and_clients(tmp_path):
    """SIGTERM (turned into the same interruption as Ctrl-C's SIGINT, which then takes the same path)."""
    sig = signal.SIGTERM
    import psutil

    out = tmp_path / "run"
    launch = subprocess.Popen([sys.executable, "-m", "splitft.cli", "launch", "--clients", "2",
                               *[o for o in RECOVER if "n_clients" not in o], "federation.rounds=200",
                               f"metrics.out_dir={out}"], stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        end = time.monotonic() + 180
        log = out / "logs" / "client_1.log"
        while not (log.exists() and "round 0:" in log.read_text(errors="replace")):
            assert time.monotonic() < end and launch.poll() is None
            time.sleep(0.1)
        children = psutil.Process(launch.pid).children()
        assert len(children) == 3
        launch.send_signal(sig)
        _, err = launch.communicate(timeout=30)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert launch.returncode == 130 and "stopped 3 of its processes" in err, err
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    size = (out / "metrics.jsonl").stat().st_size
    time.sleep(1.5)
    assert (out / "metrics.jsonl").stat().st_size == size, "nothing writes into the run any more"


def test_a_client_asleep_past_dead_after_rejoins_when_it_wakes(tmp_path):
    """A laptop whose lid closed: the process is stopped (SIGSTOP) past server.dead_after_s, dropped, and the
    federation moves on; woken (SIGCONT), it rejoins at the round the federation stands at, and the run ends
    with it."""
    parties = Parties(tmp_path, "federation.rounds=24", "server.dead_after_s=2")
    try:
        server = parties.server()
        clients = [parties.client(i) for i in range(3)]
        parties.wait_for("c2", "round 1:")
        os.kill(clients[2].pid, signal.SIGSTOP)
        parties.wait_for("server", "dropped client 2: silent")
        asleep_in = int(parties.text("server").split(": dropped client 2: silent")[0].rsplit("round ", 1)[1])
        parties.wait_for("server", f"round {asleep_in + 2}: aggregated")  # the federation moved on without it
        os.kill(clients[2].pid, signal.SIGCONT)
        assert server.wait(timeout=240) == 0, parties.all_logs()
        assert all(c.wait(timeout=60) == 0 for c in clients), parties.all_logs()
    finally:
        for p in parties.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
        parties.stop()
    woke = parties.text("c2")
    assert "fell behind" in woke, woke
    back_at = int(woke.split("rejoining at round ")[1].split()[0])
    assert asleep_in + 2 < back_at < 24, woke
    server_json = json.loads((parties.run / "server.json").read_text())
    assert all("2" not in d for d in server_json["dropped_by_round"][back_at:]), server_json
    assert json.loads((parties.run / "client_2.json").read_text())["eval_ppl"] > 1


@pytest.fixture(scope="module")
def deployments(tmp_path_factory):
    """Two finished 2-round deployments of the same shapes, seeds 0 and 7."""
    runs = {}
    for seed in (0, 7):
        out = tmp_path_factory.mktemp(f"seed{seed}") / "run"
        res = splitft("launch", "--clients", "3", *DEPLOY, f"federation.seed={seed}", "metrics.checkpoint_every=1",
                      f"metrics.out_dir={out}")
        assert res.returncode == 0, res.stderr
        runs[seed] = out
    return runs


def _killed_copy(run: Path, to: Path) -> Path:
    """The run as if its server had been killed after its last checkpoint, before it wrote its results."""
    shutil.copytree(run, to)
    for name in ("summary.json", "server.json"):
        (to / name).unlink()
    shutil.rmtree(to / "adapter")
    return to


def _files(run: Path) -> dict:
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _refused_resume(run: Path, says: str) -> None:
    before = _files(run)
    res = splitft("server", "--resume", str(run))
    lines = [x for x in res.stderr.splitlines() if x.startswith("splitft: error:")]
    assert res.returncode == 2 and len(lines) == 1 and says in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert _files(run) == before, "a refused resume must leave every file of the run as it was"


def test_a_server_resumed_under_an_edited_config_is_refused_and_changes_nothing(deployments, tmp_path):
    run = _killed_copy(deployments[0], tmp_path / "run")
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("  r: 4\n", "  r: 8\n", 1))
    _refused_resume(run, "does not fit this run's config")


def test_a_server_given_another_runs_checkpoint_refuses_it_and_changes_nothing(deployments, tmp_path):
    run = _killed_copy(deployments[0], tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(deployments[7] / "checkpoints", run / "checkpoints")  # same shapes, another seed
    _refused_resume(run, "belongs to another run")


def test_a_server_that_nobody_joined_says_so_and_exits_non_zero(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("".join(f"{i}" * 32 + "\n" for i in range(3)))
    res = splitft("server", *RECOVER, "federation.rounds=2", "server.round_timeout_s=1",
                  f"transport.address=127.0.0.1:{free_port()}", f"server.tokens_file={tokens}",
                  f"metrics.out_dir={tmp_path / 'run'}")
    lines = [x for x in res.stderr.splitlines() if x.startswith("splitft: error:")]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "ended untrained" in lines[0] and "none of the 3 clients connected" in lines[0], lines
