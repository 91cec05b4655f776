"""Running the ``sam3d serve`` application: the socket, the warning for shared hosts, uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys

import uvicorn
from starlette.applications import Starlette

from sam3d.errors import Sam3dError

__all__ = ["bind", "is_loopback", "run"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port).

    Raises:
        Sam3dError: If the address cannot be bound (port in use, unknown host).
    """
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as error:
        raise Sam3dError(
            f"cannot serve on {host}:{port} ({error.strerror or error}); pass another --port, or a --host of "
            "this machine"
        ) from None
    sock.listen(128)
    return sock


def run(app: Starlette, host: str = "127.0.0.1", port: int = 8000, api_key: bool = False) -> None:
    """Serve ``app`` until Ctrl+C; print its address (and a warning when it is reachable from elsewhere).

    ``api_key``: whether ``app`` needs an API key (then sharing it beyond this machine is not warned of).
    """
    sock = bind(host, port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    address = sock.getsockname()
    shown = f"[{address[0]}]" if ":" in address[0] else address[0]
    if not is_loopback(host) and not api_key:
        print(
            f"sam3d serve: WARNING: listening on {host}, so anyone who can reach this machine can open the page, "
            "read the scans and files it lists, upload files and run the network: there is no authentication. "
            "Share it on a trusted network only, or give it a key (--api_key or SAM3D_API_KEY); from a laptop, "
            f"prefer an SSH tunnel to the default 127.0.0.1 (ssh -L {address[1]}:127.0.0.1:{address[1]} THIS_MACHINE).",
            file=sys.stderr,
        )
    print(f"sam3d serve: open http://{shown}:{address[1]}/ (Ctrl+C stops)", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="info", access_log=False, lifespan="on")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down cleanly, then passes Ctrl+C on
        print("sam3d serve: stopped", file=sys.stderr)
