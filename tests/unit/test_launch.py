"""`splitft launch`'s waiting: a client process that does not exit after the server finished is stopped after a
grace period (the run stands), instead of holding the launch forever."""

import subprocess
import sys
import time

from splitft.deploy import launch


def _proc(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_client_hung_after_the_server_finished_is_stopped_and_the_run_stands(monkeypatch, capsys):
    monkeypatch.setattr(launch, "EXIT_GRACE_S", 0.5)
    server, done, hung = _proc("pass"), _proc("pass"), _proc("import time; time.sleep(120)")
    start = time.monotonic()
    assert launch._wait_all(server, [done, hung]) == []
    assert time.monotonic() - start < 30 and hung.poll() is not None
    assert "client 1 still running 0.5 s after the server finished; stopped" in capsys.readouterr().err


def test_a_failed_client_is_still_named_when_the_server_finished():
    server, failed = _proc("pass"), _proc("raise SystemExit(3)")
    assert launch._wait_all(server, [failed]) == ["client 0"]
