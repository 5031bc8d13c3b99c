"""The ``speedtest`` service over any ``trio.abc.Stream``: client and reference server.

Wire format in ``burrow/access/speedtest_proto.py``.  ``serve`` is the
reference the agent's service implements (or calls).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import trio

from burrow.access import speedtest_proto as proto

CHUNK = 256 * 1024
_ZEROS = bytes(CHUNK)
LINGER = 30.0


class SpeedtestError(Exception):
    """The other side broke the protocol or the stream ended early."""


@dataclass(frozen=True)
class Result:
    direction: str  # "upload" | "download"
    nbytes: int
    seconds: float

    @property
    def mbit_per_s(self) -> float:
        return self.nbytes * 8 / 1e6 / self.seconds if self.seconds > 0 else float("inf")


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    """Raises SpeedtestError when the stream ends first."""
    buf = bytearray()
    while len(buf) < n:
        data = await stream.receive_some(n - len(buf))
        if not data:
            raise SpeedtestError(f"stream ended after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


async def _send_zeros(stream: trio.abc.SendStream, n: int) -> None:
    view = memoryview(_ZEROS)
    left = n
    while left:
        step = min(left, CHUNK)
        await stream.send_all(view[:step])
        left -= step


async def _drain(stream: trio.abc.ReceiveStream, n: int) -> int:
    got = 0
    while got < n:
        data = await stream.receive_some(min(CHUNK, n - got))
        if not data:
            break
        got += len(data)
    return got


async def upload(stream: trio.abc.Stream, nbytes: int) -> Result:
    """Send ``nbytes`` to the server; timed until it confirms the count.

    Raises:
        SpeedtestError: the count is wrong or the stream ended early.
        trio.BrokenResourceError: the stream broke.
    """
    start = trio.current_time()
    await stream.send_all(proto.encode_request(proto.UPLOAD, nbytes))
    await _send_zeros(stream, nbytes)
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    try:
        got = proto.decode_count(await receive_exactly(stream, proto.COUNT_SIZE))
    except proto.SpeedtestProtocolError as exc:
        raise SpeedtestError(str(exc)) from None
    elapsed = trio.current_time() - start
    if got != nbytes:
        raise SpeedtestError(f"server received {got} of {nbytes} bytes")
    return Result("upload", nbytes, elapsed)


async def download(stream: trio.abc.Stream, nbytes: int) -> Result:
    """Ask the server for ``nbytes``; timed until the last byte arrives.

    Raises:
        SpeedtestError: fewer bytes arrived.
        trio.BrokenResourceError: the stream broke.
    """
    start = trio.current_time()
    await stream.send_all(proto.encode_request(proto.DOWNLOAD, nbytes))
    got = await _drain(stream, nbytes)
    elapsed = trio.current_time() - start
    if got != nbytes:
        raise SpeedtestError(f"received {got} of {nbytes} bytes")
    return Result("download", nbytes, elapsed)


async def serve(stream: trio.abc.Stream) -> None:
    """Answer one speedtest request on ``stream``, then close it (never raises for
    a peer's mistake or a broken stream)."""
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                 SpeedtestError, proto.SpeedtestProtocolError):
            req = proto.decode_request(await receive_exactly(stream, proto.REQUEST_SIZE))
            if req.mode == proto.UPLOAD:
                got = await _drain(stream, req.length)
                await stream.send_all(proto.encode_count(got))
            else:
                await _send_zeros(stream, req.length)
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            # Let the client read everything before we close: wait for its EOF/close.
            with trio.move_on_after(LINGER):
                while await stream.receive_some(CHUNK):
                    pass
