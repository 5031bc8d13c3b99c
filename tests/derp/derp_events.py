"""Reading a DerpConn until a given kind of event arrives (not a test module)."""

from __future__ import annotations

from typing import TypeVar

import derp.frames as f
from derp.conn import DerpConn

E = TypeVar("E")


async def next_of(conn: DerpConn, kind: type[E]) -> E:
    """The next event of ``kind``, skipping others; at most 100 events are read.

    Raises:
        AssertionError: 100 events came and none was a ``kind``.
    """
    for _ in range(100):
        ev = await conn.receive()
        if isinstance(ev, kind):
            return ev
    raise AssertionError(f"no {kind.__name__} in 100 events")


async def next_packet(conn: DerpConn) -> f.RecvPacket:
    """The next packet relayed to ``conn``."""
    return await next_of(conn, f.RecvPacket)
