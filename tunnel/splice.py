"""Two copy loops between two byte streams, with half-close and backpressure.

Each direction reads at most ``COPY_SIZE`` bytes and does not read again
until ``send_all`` returned, so a slow reader on one side slows the writer on
the other (the tunnel's and TCP's flow control do the rest).  End of input
in one direction becomes ``send_eof`` on the other; the pair ends when both
directions ended, or as soon as either side breaks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import trio

COPY_SIZE = 256 * 1024

Counter = Callable[[int], None]


async def copy_one_way(
    src: trio.abc.ReceiveStream, dst: trio.abc.SendStream, count: Counter | None = None
) -> int:
    """Copy until ``src`` ends; half-close ``dst`` if it can.  Returns the bytes copied.

    ``count`` is called with the size of each chunk once it was sent (stats).

    Raises:
        trio.BrokenResourceError, trio.ClosedResourceError: either side broke.
    """
    total = 0
    while True:
        data = await src.receive_some(COPY_SIZE)
        if not data:
            break
        await dst.send_all(data)
        total += len(data)
        if count is not None:
            count(len(data))
    if isinstance(dst, trio.abc.HalfCloseableStream):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await dst.send_eof()
    return total


async def splice(
    a: trio.abc.Stream,
    b: trio.abc.Stream,
    *,
    count_ab: Counter | None = None,
    count_ba: Counter | None = None,
) -> tuple[int, int]:
    """Copy ``a`` -> ``b`` and ``b`` -> ``a`` until both end or one breaks; close both.

    Used on both ends of a tunnel: a client's local connection to a tunnel
    stream, and an agent's tunnel stream to a local service.

    Returns:
        (bytes a->b, bytes b->a).  Never raises for a broken or closed stream.
    """
    counts = [0, 0]

    async def run(i: int, src: trio.abc.Stream, dst: trio.abc.Stream,
                  count: Counter | None, nursery: trio.Nursery) -> None:
        try:
            counts[i] = await copy_one_way(src, dst, count)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, 0, a, b, count_ab, nursery)
            nursery.start_soon(run, 1, b, a, count_ba, nursery)
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(a)
            await trio.aclose_forcefully(b)
    return counts[0], counts[1]
