"""The relay path: a ``PacketPath`` over a ``derp.client.DerpClient``.

A ``Connected`` event means the relay connection was (re)established, so
whatever was queued in the old connection or in the relay may be gone: it
becomes ``PathReset`` and every session on this path resends everything
unacknowledged at once. ``PeerGone`` is only counted: the peer may come back
on this relay or another, and the sessions' own timers handle the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from derp.client import Connected, DerpClient, Packet, PeerGone
from tunnel.path import Datagram, PathEvent, PathReset


class DerpPath:
    """Adapts a running ``DerpClient`` to the tunnel's ``PacketPath``.

    Attributes:
        client: the DERP client (its ``run`` must be running elsewhere).
        peers_gone: PeerGone events seen.
        resets: (re)connections seen.
    """

    kind = "relay"

    def __init__(self, client: DerpClient) -> None:
        self.client = client
        self.peers_gone = 0
        self.resets = 0

    async def send(self, dst: bytes, data: bytes | bytearray) -> None:
        """Send one datagram via the relay (dropped while disconnected)."""
        # The client only reads the buffer (never kept past the write): no copy.
        await self.client.send(dst, cast(bytes, data))

    def set_datagram_handler(self, handler: Callable[[bytes, bytes], None] | None) -> None:
        """Hand datagrams to ``handler(src, data)`` from the client's reader task
        (no task switch per datagram); ``receive`` then returns only resets.
        The handler must not block or raise. None restores ``receive``."""
        self.client.set_packet_handler(handler)

    async def receive(self) -> PathEvent:
        """The next datagram, or ``PathReset`` after a (re)connection."""
        while True:
            event = await self.client.receive()
            if isinstance(event, Packet):
                return Datagram(event.src, event.data)
            if isinstance(event, Connected):
                self.resets += 1
                return PathReset()
            if isinstance(event, PeerGone):
                self.peers_gone += 1
