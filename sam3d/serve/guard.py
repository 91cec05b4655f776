"""What keeps other web sites out of ``sam3d serve``: the Host, the Origin and the content type of requests.

A page on another site that the user visits can send requests to the server in the background, and
with DNS rebinding (its own name resolving to 127.0.0.1) even read the answers. So every request must
name a Host of this server (an IP address, ``localhost``, ``--host``, this machine's name, or one of
``SAM3D_ALLOWED_HOSTS``: DNS rebinding needs a name of the attacker's); every request but the page's
files must come from the server's own origin when the browser says where it comes from (``Origin``,
``Sec-Fetch-Site``); and the page's ``POST /api/...`` requests must be JSON (``/api/upload``: the
file's bytes), which a plain cross-site form cannot send. Programs (nnInteractive clients, scripts)
send no ``Origin`` and are not affected.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ALLOWED_HOSTS_ENV", "GuardMiddleware", "host_name", "server_names"]

ALLOWED_HOSTS_ENV = "SAM3D_ALLOWED_HOSTS"
PAGE_FILES_PREFIXES = ("/static/",)
UPLOAD_PATH = "/api/upload"


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header, without its port and brackets, lower case (``[::1]:80`` is ``::1``)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def server_names(host: str = "127.0.0.1", extra: Iterable[str] = ()) -> frozenset[str]:
    """The host names requests may give: ``localhost``, ``host``, this machine's names and ``extra``.

    IP addresses are always accepted (see :meth:`GuardMiddleware.allows_host`); ``extra`` defaults to the
    comma-separated ``SAM3D_ALLOWED_HOSTS`` when empty.
    """
    listed = list(extra) or os.environ.get(ALLOWED_HOSTS_ENV, "").split(",")
    names = {"localhost", host, socket.gethostname(), socket.getfqdn(), *listed}
    return frozenset(host_name(name) for name in names if name.strip())


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _refusal(message: str, status: int) -> JSONResponse:
    # "detail" for nnInteractive clients, "error" for the page
    return JSONResponse({"error": message, "detail": message}, status_code=status)


class GuardMiddleware:
    """Refuses (403) a foreign Host or Origin and (415) a page ``POST`` that is not JSON.

    Args:
        app: The application.
        names: The host names this server answers to (:func:`server_names`), besides IP addresses.
    """

    def __init__(self, app: ASGIApp, names: frozenset[str]) -> None:
        self.app, self.names = app, names

    def allows_host(self, host_header: str | None) -> bool:
        """Whether the ``Host`` names this server: an IP address, ``*.localhost`` or one of :attr:`names`."""
        if host_header is None:  # HTTP/1.0 programs; a browser always sends one
            return True
        name = host_name(host_header)
        return _is_ip(name) or name in self.names or name.endswith(".localhost")

    def refusal(self, scope: Scope) -> JSONResponse | None:
        """Why the request is refused, as the answer; None if it may go on."""
        headers = Headers(scope=scope)
        path, method = scope["path"], scope["method"]
        host = headers.get("host")
        if not self.allows_host(host):
            return _refusal(
                f"this server does not answer to the host name {host_name(host or '')!r} (a page of another site "
                f"may be trying to reach it): open it as http://127.0.0.1 or http://localhost, or restart it with "
                f"{ALLOWED_HOSTS_ENV}={host_name(host or '')} if that name is yours",
                403,
            )
        if path == "/" or path.startswith(PAGE_FILES_PREFIXES):
            return None  # the page itself may be opened from a link anywhere
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or parts.netloc.lower() != (host or "").lower():
                return _refusal(
                    f"requests from {origin} are refused: only this server's own page may use its API; "
                    "open the page from this server's address",
                    403,
                )
        if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return _refusal(
                "requests from other sites are refused: open the page from this server's address", 403
            )
        if method == "POST" and path.startswith("/api/"):
            wanted = "application/octet-stream" if path == UPLOAD_PATH else "application/json"
            given = headers.get("content-type", "").split(";")[0].strip().lower()
            if given != wanted:
                return _refusal(
                    f"POST {path} must send Content-Type: {wanted}, got {given or 'none'}; use the page, "
                    "or send that header",
                    415,
                )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a refused HTTP request at once; pass everything else on."""
        if scope["type"] == "http":
            refused = self.refusal(scope)
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)
