"""TCP and TLS listeners feeding connections to a ``FrontDoor``.

The accept loop is our own, not ``trio.serve_listeners``: when the process
runs out of file descriptors (EMFILE and friends) trio logs a traceback per
retry, ten a second.  Here each such failure is counted
(``Refusal.ACCEPT_EMFILE``), one warning line is logged per ``WARN_EVERY``
seconds, and accepting backs off (``BACKOFF_MIN`` doubling to
``BACKOFF_MAX``) until an accept succeeds again.  The connection caps
(``web.limits``) are meant to keep this from happening at all.
"""

from __future__ import annotations

import errno
import logging
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from web.frontdoor import FrontDoor
from web.limits import Refusal

log = logging.getLogger("burrow.web.listener")

# What accept(2) says when the process or the system is out of descriptors or memory.
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0
WARN_EVERY = 10.0


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
        for listener in listeners:
            nursery.start_soon(partial(accept_loop, listener, handle, frontdoor, nursery))
        task_status.started(url_for(host if host != "0.0.0.0" else bound[0], bound[1],
                                    ssl_context is not None))


async def accept_loop(
    listener: trio.abc.Listener[trio.abc.Stream],
    handle: Callable[[trio.abc.Stream], Awaitable[None]],
    frontdoor: FrontDoor,
    nursery: trio.Nursery,
) -> None:
    """Accept forever, starting ``handle(stream)`` in ``nursery`` for each connection.

    Raises:
        OSError: accept failed for a reason other than running out of descriptors.
    """
    backoff = BACKOFF_MIN
    last_warning = -WARN_EVERY
    failed = 0
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                frontdoor.gate.count(Refusal.ACCEPT_EMFILE)
                failed += 1
                now = trio.current_time()
                if now - last_warning >= WARN_EVERY:
                    log.warning(
                        "cannot accept connections: %s (%d time(s) since the last warning); "
                        "backing off; raise the open-file limit or lower the connection caps",
                        errno.errorcode.get(exc.errno or 0, "?"), failed,
                    )
                    last_warning, failed = now, 0
                await trio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            backoff = BACKOFF_MIN
            nursery.start_soon(handle, stream)
