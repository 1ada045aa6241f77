"""TLS files are checked before anything loads (one line naming the setting), an expired server certificate
is said in the log, and the server's tokens file and address fail clearly."""

import asyncio
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from splitft.config import ClientConfig, ServerConfig, TransportConfig
from splitft.deploy.serve import read_tokens
from splitft.errors import UserError
from splitft.transport.tls import certificate_warnings, check_files, read_pem


def _cert(tmp_path, days_left):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "splitft-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(now + dt.timedelta(days=days_left)).sign(key, hashes.SHA256()))
    pem, key_pem = tmp_path / f"c{days_left}.pem", tmp_path / f"k{days_left}.key"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(pem), str(key_pem)


def test_an_expired_or_expiring_certificate_is_warned_about(tmp_path):
    for days, says in [(-1, "expired on"), (3, "expires on"), (90, None)]:
        pem, _ = _cert(tmp_path, days)
        warnings = certificate_warnings(read_pem(pem, "server.tls_cert", "CERTIFICATE"), "server.tls_cert")
        assert (says in warnings[0]) if says else warnings == [], (days, warnings)


@pytest.mark.parametrize("side, key", [("server", "tls_cert"), ("server", "tls_key"), ("server", "tls_client_ca"),
                                       ("client", "tls_root"), ("client", "tls_cert"), ("client", "tls_key")])
def test_missing_or_junk_tls_files_are_one_line_naming_the_setting(tmp_path, side, key):
    pem, key_pem = _cert(tmp_path, 90)
    section = {"server": ServerConfig, "client": ClientConfig}[side]
    good = {"tls_cert": pem, "tls_key": key_pem, **({"tls_client_ca": pem} if side == "server" else {"tls_root": pem})}
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"\x00\xffnot a certificate" * 10)
    fake = tmp_path / "fake.pem"
    fake.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    check_files(section(**good))
    for bad, says in [(tmp_path / "missing.pem", "cannot read"), (junk, "is not a PEM"),
                      *([(fake, "no readable certificate")] if "key" not in key else [])]:
        with pytest.raises(UserError, match=f"{side}.{key}: .*{says}"):
            check_files(section(**{**good, key: str(bad)}))


def test_a_tokens_file_of_binary_junk_is_one_line(tmp_path):
    junk = tmp_path / "tokens.txt"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match="not a text file of tokens"):
        read_tokens(str(junk), 2)


def test_an_address_of_another_machine_is_one_line():
    from splitft.transport.base import TransportError
    from splitft.transport.grpc_server import serve_grpc

    with pytest.raises(TransportError, match="cannot listen on '192.0.2.1:50051'"):
        asyncio.run(serve_grpc(None, "192.0.2.1:50051", {}, TransportConfig(), ServerConfig(), asyncio.Event(),
                               log=lambda s: None))
