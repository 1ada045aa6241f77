"""TLS and mutual TLS on the gRPC transport, with certificates made for the test (`cryptography`): a client
with a certificate from the trusted CA gets through; without one, with another CA's, or in plaintext it is
refused at the handshake, before any message."""

import asyncio
import datetime
import ipaddress
import threading

import pytest

from splitft.config import ClientConfig, CodecConfig, ServerConfig, TransportConfig
from splitft.deploy.launch import free_port
from splitft.transport import wire
from splitft.transport.base import TransportError
from splitft.transport.grpc_client import Envelope, GrpcTransport
from splitft.transport.grpc_server import serve_grpc

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

pytestmark = pytest.mark.multiproc
TOKEN = "k" * 32


def _cert(name, key, issuer=None, issuer_key=None, ca=False):
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer.subject if issuer else subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def _write(tmp, name, cert, key):
    (tmp / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return str(tmp / f"{name}.pem"), str(tmp / f"{name}.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """ca -> server, client; other_ca -> stranger."""
    tmp = tmp_path_factory.mktemp("pki")
    out = {}
    for ca_name, leaves in [("ca", ["server", "client"]), ("other_ca", ["stranger"])]:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert(ca_name, ca_key, ca=True)
        out[ca_name] = _write(tmp, ca_name, ca, ca_key)
        for leaf in leaves:
            key = ec.generate_private_key(ec.SECP256R1())
            out[leaf] = _write(tmp, leaf, _cert(leaf, key, ca, ca_key), key)
    return out


class _Ack:
    def seen(self, client_id):
        pass

    async def __call__(self, env):
        if env.kind == Envelope.HELLO:
            return wire.encode_welcome(env, {"round": 0, "run": "r", "server": "s"})
        return Envelope(kind=Envelope.ACK, client_id=env.client_id)


@pytest.fixture(scope="module")
def mtls_server(pki):
    address = f"127.0.0.1:{free_port()}"
    me = ServerConfig(tls_cert=pki["server"][0], tls_key=pki["server"][1], tls_client_ca=pki["ca"][0])
    ready, box = threading.Event(), {}

    async def main():
        box["loop"], box["until"] = asyncio.get_running_loop(), asyncio.Event()
        # ready once it listens: a client connecting before that is refused (a race seen under load)
        await serve_grpc(_Ack(), address, {0: TOKEN}, TransportConfig(), me, box["until"],
                         log=lambda s: ready.set() if s.startswith("listening") else None)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(60), "the TLS test server did not start listening"
    yield address
    box["loop"].call_soon_threadsafe(box["until"].set)
    thread.join(10)


def _done(address, **opts):
    t = GrpcTransport(address, 0, TOKEN, TransportConfig(), ClientConfig(timeout_s=20, reconnect_s=0, **opts),
                      CodecConfig(), log=lambda s: None)
    try:
        t.hello({})
        t.done(0)
    finally:
        t.close()


def test_a_client_with_a_certificate_from_the_trusted_ca_gets_through(pki, mtls_server):
    _done(mtls_server, tls_root=pki["ca"][0], tls_cert=pki["client"][0], tls_key=pki["client"][1])


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate", "plaintext"])
def test_other_clients_are_refused_at_the_handshake(pki, mtls_server, who):
    opts = {"no certificate": dict(tls_root=pki["ca"][0]),
            "another CA's certificate": dict(tls_root=pki["ca"][0], tls_cert=pki["stranger"][0],
                                             tls_key=pki["stranger"][1]),
            "plaintext": {}}[who]
    with pytest.raises(TransportError, match="cannot be reached"):
        _done(mtls_server, **opts)
