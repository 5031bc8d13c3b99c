"""Direct paths: the tunnel's datagrams over one TCP connection.

Byte layout (see PROTOCOL.md, "Direct path"): the dialing side first sends a
37-byte hello ``"BRWD" | version 0x01 | its node key (32)``; after that both
sides send datagrams as ``length (4, BE) | datagram``, length at most 65,536.
The hello is *not* trusted: datagrams on the link are attributed to the
claimed key, and only those that authenticate under that peer's tunnel keys
(or carry a handshake from that static key) are accepted, so a forged hello
can only inject datagrams that are dropped and counted.
"""

from __future__ import annotations

import struct

import trio

from tunnel.path import MAX_DATAGRAM, Datagram, PathEvent

HELLO_MAGIC = b"BRWD"
HELLO_VERSION = 1
HELLO_LEN = 4 + 1 + 32
_LEN = struct.Struct(">I")
_READ = 256 * 1024


class DirectLinkError(Exception):
    """The peer broke the direct-path framing (bad hello, oversized datagram)."""


class DirectLink:
    """A ``PacketPath`` to one peer over one TCP connection.

    Attributes:
        peer: the node key the other side claimed in its hello.
        failed: set once the connection broke; the link is then unusable.
    """

    kind = "direct"

    def __init__(self, stream: trio.abc.Stream, peer: bytes, buffered: bytes = b"") -> None:
        self.stream = stream
        self.peer = peer
        self.failed = False
        self.confirmed = False  # delivered an authenticated datagram once
        self._buf = bytearray(buffered)
        self._send_lock = trio.Lock()
        self.bytes_sent = 0
        self.bytes_received = 0

    async def send(self, dst: bytes, data: bytes | bytearray) -> None:
        """Send one datagram; drops silently (and marks the link failed) on error."""
        if self.failed:
            await trio.lowlevel.checkpoint()
            return
        try:
            async with self._send_lock:
                await self.stream.send_all(_LEN.pack(len(data)) + data)
            self.bytes_sent += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.failed = True

    async def send_many(self, dst: bytes, datagrams: list[bytes | bytearray]) -> None:
        """Send several datagrams with one write."""
        if self.failed or not datagrams:
            await trio.lowlevel.checkpoint()
            return
        parts: list[bytes | bytearray] = []
        for d in datagrams:
            parts.append(_LEN.pack(len(d)))
            parts.append(d)
        try:
            async with self._send_lock:
                await self.stream.send_all(b"".join(parts))
            self.bytes_sent += sum(map(len, datagrams))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.failed = True

    async def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            chunk = await self.stream.receive_some(_READ)
            if not chunk:
                raise trio.EndOfChannel
            self._buf += chunk

    async def receive(self) -> PathEvent:
        """The next datagram.

        Raises:
            trio.EndOfChannel: the connection ended or broke.
            DirectLinkError: an oversized datagram length.
        """
        try:
            await self._fill(4)
            (n,) = _LEN.unpack_from(self._buf)
            if n > MAX_DATAGRAM:
                raise DirectLinkError(f"datagram of {n} bytes")
            await self._fill(4 + n)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.failed = True
            raise trio.EndOfChannel from exc
        except trio.EndOfChannel:
            self.failed = True
            raise
        data = bytes(self._buf[4 : 4 + n])
        del self._buf[: 4 + n]
        self.bytes_received += n
        return Datagram(self.peer, data)

    async def aclose(self) -> None:
        self.failed = True
        await self.stream.aclose()


def hello(local_key: bytes) -> bytes:
    return HELLO_MAGIC + bytes([HELLO_VERSION]) + local_key


async def dial(host: str, port: int, local_key: bytes, peer: bytes) -> DirectLink:
    """Connect to a peer's advertised endpoint and send our hello.

    Raises:
        OSError: the connection failed.
    """
    stream = await trio.open_tcp_stream(host, port)
    try:
        await stream.send_all(hello(local_key))
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return DirectLink(stream, peer)


async def read_hello(stream: trio.abc.Stream) -> DirectLink:
    """Read a dialer's hello and return the link (attributed to its claimed key).

    Raises:
        DirectLinkError: not a hello.
        trio.EndOfChannel: the connection ended first.
    """
    buf = bytearray()
    while len(buf) < HELLO_LEN:
        chunk = await stream.receive_some(_READ)
        if not chunk:
            raise trio.EndOfChannel
        buf += chunk
    if buf[:4] != HELLO_MAGIC or buf[4] != HELLO_VERSION:
        raise DirectLinkError("bad hello")
    return DirectLink(stream, bytes(buf[5:HELLO_LEN]), bytes(buf[HELLO_LEN:]))
