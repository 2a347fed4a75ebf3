"""HTTPS for the listener: [server] tls_cert / tls_key loaded into a server SSL context."""
from __future__ import annotations

import ssl
from pathlib import Path

from gateway.config import ServerConfig


class TLSError(Exception):
    """The certificate or key cannot be used; the message names the file and the fix."""


def server_context(server: ServerConfig) -> ssl.SSLContext | None:
    """The SSL context `serve` listens with, None when TLS is not configured; TLSError for a bad pair."""
    if not server.tls_cert or not server.tls_key:
        return None
    for key in ("tls_cert", "tls_key"):
        # OpenSSL reports a missing file as a bare "PEM lib" error: name it first.
        if not Path(getattr(server, key)).is_file():
            raise TLSError(f"[server] {key} file {getattr(server, key)} not found.")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(server.tls_cert, server.tls_key)
    except PermissionError as exc:
        raise TLSError(f"TLS file {exc.filename} cannot be read: permission denied.") from None
    except ssl.SSLError as exc:
        # OpenSSL's reason, e.g. KEY_VALUES_MISMATCH when the key is not the certificate's; never the key itself.
        raise TLSError(f"[server] tls_cert {server.tls_cert} and tls_key {server.tls_key} are not a usable pair "
                       f"of PEM certificate and private key ({exc.reason or exc}).") from None
    except OSError as exc:
        raise TLSError(f"TLS files cannot be read: {exc}.") from None
    return ctx
