"""Careless input through the real command line: each case exits 2 with exactly one `splitft: error:` line
naming what to fix, prints no traceback, and writes nothing (no run directory appears; a user's file that was
there is unchanged)."""

import pytest

from splitft.cli import main
from tests.e2e.test_cli import TINY

pytestmark = pytest.mark.multiproc


def _bomb(tmp):
    levels = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp / "bomb.yaml").write_text("\n".join(levels) + "\nfederation:\n  rounds: *l8\n")
    return ["--config", str(tmp / "bomb.yaml")]


def _file(tmp, name, data: bytes):
    (tmp / name).write_bytes(data)
    return str(tmp / name)


def _tokens(tmp):
    return _file(tmp, "tokens.txt", b"".join(bytes([97 + i]) * 32 + b"\n" for i in range(3)))


_HELD = []  # sockets that keep a port busy while a case runs


def _busy_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    _HELD.append(s)
    return s.getsockname()[1]


def _mismatched_tls(tmp):
    """A certificate and the key of another certificate."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.contract.test_tls import _cert, _write

    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(2)]
    cert, _ = _write(tmp, "a", _cert("a", keys[0]), keys[0])
    _, key = _write(tmp, "b", _cert("b", keys[1]), keys[1])
    return [f"server.tls_cert={cert}", f"server.tls_key={key}"]


CASES = {
    "config not UTF-8": (lambda t: ["simulate", "--config", _file(t, "c.yaml", "a: d\xe9j\xe0\n".encode("latin-1"))],
                         "not UTF-8"),
    "YAML alias bomb": (lambda t: ["simulate", *_bomb(t)], "federation.rounds: expected int"),
    "negative seed": (lambda t: ["simulate", "federation.seed=-1"], "federation.seed"),
    "NaN lr": (lambda t: ["simulate", "train.lr=.nan"], "train.lr: must be a finite number"),
    "lora.targets match nothing": (lambda t: ["simulate", "lora.targets=nothing_like_this"], "lora.targets"),
    "random gguf": (lambda t: ["simulate", f"model.source={_file(t, 'm.gguf', bytes(range(256)) * 40)}"],
                    "not a readable GGUF"),
    "empty gguf": (lambda t: ["simulate", f"model.source={_file(t, 'e.gguf', b'')}"], "not a readable GGUF"),
    "out_dir is a file": (lambda t: ["simulate", f"metrics.out_dir={_file(t, 'f', b'mine')}"], "is a file"),
    "out_dir below a file": (lambda t: ["simulate", f"metrics.out_dir={_file(t, 'g', b'mine')}/run"],
                             "lies below the file"),
    "out_dir holds the user's config.yaml": (lambda t: ["simulate", f"metrics.out_dir={t}"]
                                             if _file(t, "config.yaml", b"# mine\n") else [], "holds a config.yaml"),
    "port 99999": (lambda t: ["server", "transport.address=127.0.0.1:99999"], "port in 1..65535"),
    "chunk_kb huge": (lambda t: ["simulate", "transport.chunk_kb=3000000"], "transport.chunk_kb"),
    "tokens file of junk": (lambda t: ["server", f"server.tokens_file={_file(t, 'tok', bytes(range(256)))}"],
                            "not a text file of tokens"),
    "missing TLS certificate": (lambda t: ["server", f"server.tokens_file={_tokens(t)}",
                                           f"server.tls_cert={t}/none.pem", f"server.tls_key={t}/none.key"],
                                "server.tls_cert: cannot read"),
    "junk TLS root on a client": (lambda t: ["client", "--client-id", "0",
                                             f"client.tls_root={_file(t, 'r.pem', b'junk')}"],
                                  "client.tls_root"),
    "unknown client id": (lambda t: ["client", "--client-id", "7"], "--client-id"),
    "float16 compute on a CPU": (lambda t: ["simulate", "model.device=cpu", "train.compute_dtype=float16"],
                                 "train.compute_dtype=float16: refused on a CPU"),
    "bf16 weights, fp32 compute": (lambda t: ["simulate", "model.dtype=bfloat16", "train.compute_dtype=float32"],
                                   "16-bit frozen weights need 16-bit compute"),
    "unknown compute dtype": (lambda t: ["simulate", "train.compute_dtype=fp8"], "train.compute_dtype: must be one of"),
    "negative loss chunk": (lambda t: ["simulate", "train.loss_chunk_tokens=-1"], "train.loss_chunk_tokens"),
    "unknown random shape": (lambda t: ["simulate", "model.source=random:gpt-9"], "unknown random shape"),
    "server address not of this machine": (lambda t: ["server", f"server.tokens_file={_tokens(t)}",
                                                      "transport.address=192.0.2.1:50051"],
                                           "cannot listen on '192.0.2.1:50051': Cannot assign requested address"),
    "server port in use": (lambda t: ["server", f"server.tokens_file={_tokens(t)}",
                                      f"transport.address=127.0.0.1:{_busy_port()}"],
                           "Address already in use; another process listens on it"),
    "TLS key of another certificate": (lambda t: ["server", f"server.tokens_file={_tokens(t)}",
                                                  *_mismatched_tls(t)],
                                       "is not the key of the certificate in server.tls_cert"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_careless_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, case):
    make, says = CASES[case]
    monkeypatch.setenv("SPLITFT_TOKEN", "a" * 32)
    out = tmp_path / "run"
    args = make(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    overrides = [] if "--config" in args else TINY  # a tiny model, so a case that got past its check would run
    has_out = any(a.startswith("metrics.out_dir=") for a in args)
    code = main([args[0], *overrides, *args[1:], *([] if has_out else [f"metrics.out_dir={out}"])])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("splitft: error:")]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and says in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "something was written"
    if case == "out_dir holds the user's config.yaml":
        assert (tmp_path / "config.yaml").read_text() == "# mine\n"
