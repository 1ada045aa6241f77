"""TLS files, checked before a server listens or a client connects: a missing, unreadable or non-PEM file is one
line naming its setting (gRPC would fail later with a handshake error, or retry for minutes), and a server
certificate that has expired or is about to is said in the log.

    pem = read_pem(opts.tls_cert, "server.tls_cert", "CERTIFICATE")
    for line in certificate_warnings(pem, "server.tls_cert"): log(line)
"""

from __future__ import annotations

import datetime as dt
import ssl

from ..config import ClientConfig, ServerConfig
from ..errors import UserError, reason

SOON = dt.timedelta(days=7)


def read_pem(path: str, key: str, kind: str) -> bytes:
    """The bytes of the PEM file at `path` (setting `key`), which must hold a `kind` block (CERTIFICATE, or
    PRIVATE KEY in any of its spellings)."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as e:
        raise UserError(f"{key}: cannot read '{path}': {e.strerror}") from None
    if b"-----BEGIN " not in data or kind.encode() not in data:
        raise UserError(f"{key}: '{path}' is not a PEM {kind.lower()} file (no '-----BEGIN ... {kind}-----')")
    if kind == "CERTIFICATE":
        _certificate(data, path, key)
    return data


def _certificate(pem: bytes, path: str, key: str):
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise UserError(f"{key}: '{path}' holds no readable certificate ({reason(e)})") from None


def certificate_warnings(pem: bytes, key: str, now: dt.datetime | None = None) -> list[str]:
    """Warnings for a certificate that has expired, expires within 7 days, or is not valid yet."""
    cert = _certificate(pem, "", key)
    now = now or dt.datetime.now(dt.UTC)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if end <= now:
        return [f"warning: {key}: the certificate expired on {end:%Y-%m-%d %H:%M} UTC; clients will refuse the "
                "TLS handshake until it is renewed"]
    if start > now:
        return [f"warning: {key}: the certificate is not valid before {start:%Y-%m-%d %H:%M} UTC"]
    if end - now < SOON:
        return [f"warning: {key}: the certificate expires on {end:%Y-%m-%d %H:%M} UTC; renew it"]
    return []


def check_files(me: ServerConfig | ClientConfig) -> None:
    """Read every TLS file a party (its `server` or `client` section) is configured with, before a model loads or
    a file is written; a key must belong to its certificate."""
    side = "server" if isinstance(me, ServerConfig) else "client"
    trusted = "tls_client_ca" if side == "server" else "tls_root"  # a CA: a certificate, no key of ours
    for name, kind in [("tls_cert", "CERTIFICATE"), ("tls_key", "PRIVATE KEY"), (trusted, "CERTIFICATE")]:
        if getattr(me, name):
            read_pem(getattr(me, name), f"{side}.{name}", kind)
    if me.tls_cert and me.tls_key:
        check_pair(me.tls_cert, me.tls_key, f"{side}.tls_cert", f"{side}.tls_key")


def check_pair(cert: str, key: str, cert_key: str, key_key: str) -> None:
    """The private key must be the certificate's (gRPC would only fail when the server binds, blamed on the
    address) and not encrypted (gRPC cannot ask for its passphrase)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as e:
        mismatch = "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e)
        why = f"is not the key of the certificate in {cert_key} ('{cert}')" if mismatch else \
            f"cannot be used with {cert_key} ({reason(e)}; an encrypted key is not supported)"
        raise UserError(f"{key_key}: '{key}' {why}") from None
    except OSError as e:
        raise UserError(f"{key_key}: cannot read '{key}': {e.strerror}") from None
