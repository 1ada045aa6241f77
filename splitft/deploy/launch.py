"""`splitft launch`: a server and N client processes on loopback, logs collected in one run directory.

    splitft launch --config configs/default.yaml --clients 3 split.policy=fixed metrics.out_dir=out/launch
Picks a free port, writes fresh tokens to <out_dir>/tokens.txt (mode 600; each client gets its own through its
environment), starts `splitft server`, waits until it listens, starts the clients, and waits for all. Logs go
to <out_dir>/logs/{server,client_<i>}.log. A client that fails is dropped by the server and the run goes on
(a warning names it); if the server fails, the clients are stopped and the error names the log to read.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..config import Config, save_config
from ..data.datasets import parse_rows
from ..errors import UserError
from ..rundir import refuse_existing_run


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (launch and the tests pick their servers' ports)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# All processes share this machine's cores and take turns (steps run in plan order). OpenMP's default
# busy-wait makes every idle process spin on the cores the busy one needs: on 2 cores the tiny model ran
# 7 steps/s that way and 24 with passive waiting (benchmarks/transport.py). The caller's environment wins.
SHARED_MACHINE = {"OMP_WAIT_POLICY": "PASSIVE"}


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with log.open("w") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "splitft.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                                env={**SHARED_MACHINE, **os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})


EXIT_GRACE_S = 60.0
"""How long launch waits for a client to exit once the server has finished (a client exits within a second of
its DONE being acknowledged)."""


def _wait_listening(server: subprocess.Popen, log: Path, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if server.poll() is not None:
            raise UserError(f"the server exited with code {server.returncode}; see {log}")
        if "listening on" in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    server.terminate()
    raise UserError(f"the server did not start listening within {timeout_s:.0f} s; see {log}")


def launch(base: Config, n_clients: int, client_data: list[str] | None = None, emulate: bool = False) -> dict:
    """`client_data`: one data file per client; None deals `data.path` with the configured partitioner.
    `emulate`: the server and every client pace themselves to their devices in the config (`deploy/emulate.py`)."""
    if n_clients < 1:
        raise UserError(f"--clients: need at least 1, got {n_clients}")
    if client_data is not None:
        if len(client_data) != n_clients:
            raise UserError(f"--client-data: give one file per client ({n_clients}), got {len(client_data)}")
        for path in client_data:  # missing, empty or unreadable: one line now, not a client failing later
            parse_rows(dataclasses.replace(base.data, path=path))
    cfg = copy.deepcopy(base)
    cfg.federation.n_clients = n_clients
    cfg.transport.address = f"127.0.0.1:{free_port()}"
    refuse_existing_run(cfg)
    out = Path(cfg.metrics.out_dir)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    tokens = [secrets.token_hex(16) for _ in range(n_clients)]
    token_file = out / "tokens.txt"
    token_file.unlink(missing_ok=True)  # created 0600 below, never readable by others even for a moment
    with os.fdopen(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write("\n".join(tokens) + "\n")
    cfg.server.tokens_file = str(token_file)
    cfg_file = out / "launch_config.yaml"
    save_config(cfg, cfg_file)
    children: list[subprocess.Popen] = []
    with _stopping_children_on_signals(children, out / "logs"):
        server = _spawn(["server", "--config", str(cfg_file), *(["--emulate"] if emulate else [])],
                        out / "logs" / "server.log")
        children.append(server)
        _wait_listening(server, out / "logs" / "server.log", timeout_s=600)
        if client_data is None:
            print(f"launch: every client trains on its share of {cfg.data.path}, dealt with data.partitioner="
                  f"{cfg.data.partitioner} as `splitft simulate` deals it (--client-data gives each its own file)",
                  file=sys.stderr, flush=True)
        own = [["--dealt"] if client_data is None else [f"data.path={Path(client_data[i]).resolve()}"]
               for i in range(n_clients)]
        for i in range(n_clients):
            children.append(_spawn(["client", "--config", str(cfg_file), "--client-id", str(i), "--server",
                                    cfg.transport.address, *own[i], *(["--emulate"] if emulate else [])],
                                   out / "logs" / f"client_{i}.log",
                                   {cfg.client.token_env: tokens[i]}))
        clients = children[1:]
        failed = _wait_all(server, clients)
    if "server" in failed or len(failed) >= n_clients:
        raise UserError(f"{', '.join(failed)} failed; see {out / 'logs'}")
    for name in failed:  # the server dropped it and finished over the others: say so, the run stands
        print(f"warning: {name} exited with an error; the server dropped it (see {out / 'logs'})", file=sys.stderr,
              flush=True)
    print(f"launch finished: {n_clients - len(failed)}/{n_clients} clients, logs in {out / 'logs'}", file=sys.stderr,
          flush=True)
    return {"out_dir": str(out), "clients": n_clients, "failed": failed}


@contextmanager
def _stopping_children_on_signals(children: list[subprocess.Popen], logs: Path) -> Iterator[None]:
    """SIGINT (Ctrl-C) or SIGTERM while launch runs: stop the processes it started (and only those), say so,
    and exit as interrupted; without this they ran on for seconds, writing into the run directory."""
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except KeyboardInterrupt:
        stopped = _stop(children)
        print(f"launch: interrupted; stopped {stopped} of its processes (server and clients); logs in {logs}",
              file=sys.stderr, flush=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(children: list[subprocess.Popen], grace_s: float = 5.0) -> int:
    """SIGTERM to every child still running, SIGKILL to those still there after `grace_s`; how many ran."""
    running = [p for p in children if p.poll() is None]
    for p in running:
        p.terminate()
    end = time.monotonic() + grace_s
    for p in running:
        try:
            p.wait(timeout=max(end - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return len(running)


def _wait_all(server: subprocess.Popen, clients: list[subprocess.Popen]) -> list[str]:
    """Waits for every process; returns the names of those that failed. A failed client does not stop the run
    (the server drops it after server.dead_after_s); a failed server stops the clients. A client still running
    EXIT_GRACE_S after the server finished well is stopped with a warning (the server has its report and the run
    stands): a process hung at exit must not hold the launch forever."""
    procs = {f"client {i}": p for i, p in enumerate(clients)}
    finished_at = None
    while server.poll() is None or any(p.poll() is None for p in procs.values()):
        if server.poll() not in (None, 0):
            for p in procs.values():
                if p.poll() is None:
                    p.terminate()
            return ["server"]
        if server.poll() == 0:
            finished_at = finished_at or time.monotonic()
            if time.monotonic() - finished_at > EXIT_GRACE_S:
                hung = [name for name, p in procs.items() if p.poll() is None]
                _stop([procs[name] for name in hung])
                print(f"warning: {', '.join(hung)} still running {EXIT_GRACE_S:g} s after the server finished; "
                      "stopped", file=sys.stderr, flush=True)
                return [name for name, p in procs.items() if p.returncode != 0 and name not in hung]
        time.sleep(0.2)
    return [name for name, p in procs.items() if p.returncode != 0] + (["server"] if server.returncode else [])
