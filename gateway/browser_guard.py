"""Refuse what only a web page would send: a Host the gateway is not known by (DNS rebinding) and
an Origin the operator has not allowed (cross-site requests)."""
from __future__ import annotations

import ipaddress

from aiohttp import web

from gateway.config import ServerConfig
from gateway.protocol.errors import GatewayError

_WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # listen on every interface: names no single host
_SHOWN = 100  # characters of a refused Host or Origin echoed in the error


def host_name(host: str) -> str:
    """The name part of a Host header, lowercased: port, IPv6 brackets and a trailing dot removed."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


class BrowserGuard:
    """The Host and Origin checks of one server config."""

    def __init__(self, server: ServerConfig):
        self.names = {"localhost", *server.allowed_hosts}
        if server.host.lower() not in _WILDCARD_HOSTS:
            self.names.add(host_name(server.host))
        self.origins = set(server.allowed_origins)

    def refusal(self, request: web.Request) -> GatewayError | None:
        """A 403 for a Host or Origin this gateway does not serve, else None."""
        host = request.headers.get("Host")
        if host is not None and not self._host_ok(host_name(host), request):
            return GatewayError(403, f"Host {host[:_SHOWN]!r} is not an address of this gateway; add the name to "
                                     "server.allowed_hosts to serve it")
        origin = request.headers.get("Origin")
        if origin is not None and origin.strip().lower().rstrip("/") not in self.origins:
            return GatewayError(403, f"Origin {origin[:_SHOWN]!r} is not allowed; add it to server.allowed_origins "
                                     "to let that web page call the gateway")
        return None

    def _host_ok(self, name: str, request: web.Request) -> bool:
        if name in self.names:
            return True
        try:
            addr = ipaddress.ip_address(name)
        except ValueError:
            return False  # a name nobody configured: what a DNS-rebinding page sends
        if addr.is_loopback:
            return True
        # The address literal the connection arrived on (e.g. the LAN address of a 0.0.0.0 bind): no
        # DNS name is involved, so nothing can be rebound; a cross-site page using it still sends an
        # Origin, which `refusal` checks.
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        if not sock:
            return False
        try:
            local = ipaddress.ip_address(str(sock[0]).split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(local, "ipv4_mapped", None)
        return addr == local or addr == mapped
