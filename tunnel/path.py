"""The seam between the tunnel and whatever carries its datagrams.

A ``PacketPath`` is one way to reach peers: the DERP relay (``derp_path``),
a direct TCP connection (``direct``), or an in-memory link in tests
(``mempath``). The tunnel core only ever sees this protocol, never DERP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

MAX_DATAGRAM = 65536


@dataclass(frozen=True, slots=True)
class Datagram:
    """A datagram from node key ``src``."""

    src: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class PathReset:
    """The path was re-established (e.g. the relay connection came back):
    whatever was in flight on it may be lost. ``peer`` None means all peers."""

    peer: bytes | None = None


PathEvent = Datagram | PathReset


class PacketPath(Protocol):
    """One way to reach peers.

    ``send`` may silently drop (a relay that is reconnecting does). ``receive``
    raises ``trio.EndOfChannel`` or ``trio.BrokenResourceError`` when the path
    is gone for good.
    """

    kind: str  # "relay" or "direct"

    async def send(self, dst: bytes, data: bytes | bytearray) -> None: ...

    async def receive(self) -> PathEvent: ...
