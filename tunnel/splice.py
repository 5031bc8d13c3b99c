"""Two copy loops between two byte streams, with half-close and backpressure.

Each direction reads at most ``COPY_SIZE`` bytes and does not read again
until ``send_all`` returned, so a slow reader on one side slows the writer on
the other (the tunnel's and TCP's flow control do the rest).  End of input
in one direction becomes ``send_eof`` on the other; the pair ends when both
directions ended, or as soon as either side breaks.
"""

from __future__ import annotations

import contextlib

import trio

COPY_SIZE = 256 * 1024


async def copy_one_way(src: trio.abc.ReceiveStream, dst: trio.abc.SendStream) -> int:
    """Copy until ``src`` ends; half-close ``dst`` if it can.  Returns the bytes copied.

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
    if isinstance(dst, trio.abc.HalfCloseableStream):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await dst.send_eof()
    return total


async def splice(a: trio.abc.Stream, b: trio.abc.Stream) -> tuple[int, int]:
    """Copy ``a`` -> ``b`` and ``b`` -> ``a`` until both end or one breaks; close both.

    Returns:
        (bytes a->b, bytes b->a).  Never raises for a broken or closed stream.
    """
    counts = [0, 0]

    async def run(i: int, src: trio.abc.Stream, dst: trio.abc.Stream,
                  nursery: trio.Nursery) -> None:
        try:
            counts[i] = await copy_one_way(src, dst)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, 0, a, b, nursery)
            nursery.start_soon(run, 1, b, a, nursery)
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(a)
            await trio.aclose_forcefully(b)
    return counts[0], counts[1]
