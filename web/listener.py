"""TCP and TLS listeners feeding connections to a ``FrontDoor``."""

from __future__ import annotations

import ssl
from functools import partial

import trio

from web.frontdoor import FrontDoor


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:3001"`` / ``"[::1]:0"`` / ``":3001"`` -> (host, port).

    Raises:
        ValueError: not ``host:port`` with a port in 0..65535.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"listen address must be host:port, got {listen!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port out of range in {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", port


def _peer(stream: trio.abc.Stream) -> str:
    inner: object = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    if isinstance(inner, trio.SocketStream):
        try:
            addr = inner.socket.getpeername()
        except OSError:
            return "?"
        return f"{addr[0]}:{addr[1]}"
    return "?"


def url_for(host: str, port: int, tls: bool) -> str:
    """The base URL clients use to reach ``host:port``."""
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


async def serve_http(
    frontdoor: FrontDoor,
    listen: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``listen`` (port 0 picks a free port) and serve until cancelled.

    ``task_status.started`` gets the bound base URL, e.g. ``http://127.0.0.1:40123``.

    Raises:
        ValueError: bad ``listen``.
        OSError: the address cannot be bound.
    """
    host, port = parse_listen(listen)
    tcp = await trio.open_tcp_listeners(port, host=host)
    bound = tcp[0].socket.getsockname()
    scheme = "https" if ssl_context is not None else "http"
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
    for lst in tcp:
        if ssl_context is not None:
            listeners.append(trio.SSLListener(lst, ssl_context, https_compatible=True))
        else:
            listeners.append(lst)

    async def handle(stream: trio.abc.Stream) -> None:
        await frontdoor.serve_stream(stream, remote=_peer(stream), scheme=scheme)

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio.serve_listeners, handle, listeners))
        task_status.started(url_for(host if host != "0.0.0.0" else bound[0], bound[1],
                                    ssl_context is not None))
