"""Mesh links: one relay dialing a sibling to learn its clients and forward to them.

Theory of operation
-------------------
``run_mesh_link(server, dial, private_key=..., name=...)`` loops forever:
dial the sibling (``dial`` returns a stream already upgraded to DERP),
handshake as a client with the relay's own key (passed in by whoever built
the server, ``relay.node``) and the mesh key, send WatchConns, then read.
Each PeerPresent teaches ``server`` that the key lives behind this link; each
PeerGone unteaches it.  The link is the server's ``PacketForwarder``: the
server calls only ``forward`` and never imports this module.  While the link
is up, a SendPacket for such a key is queued on the link as ForwardPacket
(``MeshLink.forward``, never blocking the reader that calls it; drop-oldest
when full) and a writer task sends what is queued in batches.  The sibling
delivers forwarded packets only locally, so a packet crosses at most one mesh
hop.  When the link breaks, every key learned through it is forgotten (local
clients that sent to one get PeerGone) and the link redials after a jittered
exponential backoff.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable

import trio

from derp import frames as fr
from derp.conn import DerpConn
from derp.metrics import DropReason
from derp.server import DerpServer

log = logging.getLogger(__name__)

_BATCH_BYTES = 1 << 19


class MeshLink:
    """The state of one outbound mesh link (owned by its ``run_mesh_link`` loop).

    Implements ``derp.server.PacketForwarder``.

    Attributes:
        name: the sibling's name, for logs.
        max_queue: packets queued for the sibling before the oldest is dropped.
    """

    __slots__ = ("_queue", "_server", "_wake", "max_queue", "name")

    def __init__(self, name: str, server: DerpServer, max_queue: int) -> None:
        self.name = name
        self.max_queue = max_queue
        self._server = server
        self._queue: deque[tuple[bytes, bytes]] = deque()  # (header+keys, data)
        self._wake = trio.Event()

    def forward(self, src: bytes, dst: bytes, data: bytes) -> None:
        """Queue a packet for the sibling (called by local readers; never blocks)."""
        q = self._queue
        if len(q) >= self.max_queue:
            q.popleft()
            self._server.metrics.drops[DropReason.MESH_QUEUE_FULL] += 1
        q.append((fr.forward_packet_header(src, dst, len(data)), data))
        if not self._wake.is_set():
            self._wake.set()

    async def _writer(self, conn: DerpConn) -> None:
        q = self._queue
        m = self._server.metrics
        while True:
            if not q:
                self._wake = trio.Event()
                await self._wake.wait()
            parts: list[bytes] = []
            size = 0
            n = 0
            while q and size < _BATCH_BYTES:
                header, data = q.popleft()
                parts.append(header)
                parts.append(data)
                size += len(header) + len(data)
                n += 1
            await conn.send_raw(b"".join(parts))
            m.packets_forwarded += n

    async def _reader(self, conn: DerpConn) -> None:
        server = self._server
        while True:
            event = await conn.receive()
            if isinstance(event, fr.PeerPresent):
                server.learn_remote(event.key, self)
            elif isinstance(event, fr.PeerGone):
                server.forget_remote(event.key, self)

    async def _pinger(self, conn: DerpConn, interval: float, timeout: float) -> None:
        # A sibling that hangs without closing the TCP connection would keep
        # its peers "present" forever; a Pong that does not come back ends the
        # link (DerpTimeoutError), so its peers are forgotten and it redials.
        while True:
            await trio.sleep(interval)
            await conn.ping(timeout=timeout)

    async def run(self, conn: DerpConn, *, ping_interval: float, ping_timeout: float) -> None:
        """Serve the link on a handshaken connection until it breaks.

        Raises:
            DerpError: the link broke (closed, malformed, or no Pong in time).
        """
        await conn.watch_conns()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, conn)
            nursery.start_soon(self._pinger, conn, ping_interval, ping_timeout)
            await self._reader(conn)


async def run_mesh_link(
    server: DerpServer,
    dial: Callable[[], Awaitable[trio.abc.Stream]],
    *,
    private_key: bytes,
    name: str,
    min_backoff: float = 0.5,
    max_backoff: float = 30.0,
    handshake_timeout: float = 10.0,
    ping_interval: float = 15.0,
    ping_timeout: float = 10.0,
) -> None:
    """Keep a mesh link from ``server`` to one sibling up until cancelled.

    Args:
        server: the local relay; must have a ``mesh_key``.
        private_key: the relay's own private key (the one ``server`` was
            built with), to handshake with the sibling as this relay.
        dial: returns a fresh stream to the sibling, already upgraded to DERP
            (raising any Exception on failure: the link logs it and retries).
        name: the sibling's name, for logs.
        min_backoff / max_backoff: redial delay bounds in seconds (doubling,
            jittered, reset after a successful handshake).
        handshake_timeout: seconds for the DERP handshake with the sibling.
        ping_interval / ping_timeout: the link pings the sibling every
            ``ping_interval`` s; no Pong within ``ping_timeout`` s ends it.

    Raises:
        ValueError: the server has no mesh key.
    """
    if server.mesh_key is None:
        raise ValueError("a mesh link needs the server's mesh key")
    delay = min_backoff
    while True:
        link = MeshLink(name, server, 4 * server.queue_size)
        up = False
        try:
            stream = await dial()
            conn = await DerpConn.handshake(
                stream,
                private_key,
                mesh_key=server.mesh_key,
                timeout=handshake_timeout,
            )
            up = True
            server.metrics.mesh_links += 1
            delay = min_backoff
            log.info("mesh link to %s up", name)
            try:
                await link.run(conn, ping_interval=ping_interval, ping_timeout=ping_timeout)
            finally:
                await conn.aclose()
        except Exception as exc:  # any failure of one attempt: log, back off, redial
            log.info("mesh link to %s: %r", name, exc)
        finally:
            if up:
                server.metrics.mesh_links -= 1
            server.forget_link(link)
        await trio.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, max_backoff)
