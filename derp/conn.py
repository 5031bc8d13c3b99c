"""Client side of one DERP connection over an already-connected ``trio.abc.Stream``.

Theory of operation
-------------------
``DerpConn.handshake`` reads ServerKey, sends ClientInfo and (by default)
waits for ServerInfo, which the server sends only after registering the
client: once it returns, packets sent to this key are delivered here.  After
that, one task calls ``receive()`` in a loop; any number of tasks may send
(sends are serialized by a lock, one write per call: on plain TCP a direct
syscall, else ``send_all``).  ``receive()``
answers the server's Pings itself and resolves pending ``ping()`` calls when
their Pong arrives, so ``ping()`` needs that receive loop running.  Every way
the connection can end surfaces as ``DerpConnectionClosed``; malformed input
as ``DerpProtocolError``.  Reconnecting is the caller's job (``derp.client``).
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

import trio

from derp import frames as fr
from derp.errors import (
    DerpConnectionClosed,
    DerpProtocolError,
    DerpTimeoutError,
    ProtocolErrorReason,
)
from derp.handshake import build_client_info, open_server_info
from derp.keys import check_key, public_key
from web.prefixed import PrefixedStream

Event = (
    fr.RecvPacket
    | fr.PeerGone
    | fr.PeerPresent
    | fr.KeepAlive
    | fr.Ping
    | fr.Pong
    | fr.Health
    | fr.Restarting
    | fr.ServerInfo
)

_RECV_BYTES = 1 << 18
_HDR = struct.Struct(">BI")
_SEND = fr.FrameType.SEND_PACKET
_FORWARD = fr.FrameType.FORWARD_PACKET
_EVENT_TYPES = (
    fr.PeerGone,
    fr.PeerPresent,
    fr.KeepAlive,
    fr.Health,
    fr.Restarting,
)


class _PendingPing:
    __slots__ = ("done", "received_at")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.received_at: float | None = None


class DerpConn:
    """One handshaken DERP client connection.

    Attributes:
        stream: the underlying stream (owned by this object).
        public_key: this client's public key.
        server_key: the relay's public key, from ServerKey.
        server_info: the opened ServerInfo JSON, once received.
        last_received: ``trio.current_time()`` of the last bytes received
            (for the 120 s dead-connection rule).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        private_key: bytes,
        server_key: bytes,
        decoder: fr.FrameDecoder,
    ) -> None:
        self.stream = stream
        self._private_key = private_key
        self.public_key = public_key(private_key)
        self.server_key = server_key
        self.server_info: dict[str, Any] | None = None
        self.last_received = trio.current_time()
        self._decoder = decoder
        self._early: deque[fr.Frame] = deque()
        self._send_lock = trio.Lock()
        self._sock = raw_socket(stream)
        self._pings: dict[bytes, _PendingPing] = {}
        self._closed = False

    # ------------------------------------------------------------ handshake

    @classmethod
    async def handshake(
        cls,
        stream: trio.abc.Stream,
        private_key: bytes,
        *,
        mesh_key: bytes | None = None,
        can_ack_pings: bool = True,
        timeout: float = 10.0,
        expect_server_key: bytes | None = None,
        wait_server_info: bool = True,
    ) -> DerpConn:
        """Run the client handshake on ``stream`` and return the connection.

        On any failure the stream is closed before the error propagates.

        Args:
            stream: a connected stream (after any HTTP upgrade).
            private_key: this client's 32-byte private key.
            mesh_key: the mesh key, for relays meshing with a sibling.
            can_ack_pings: tell the server we answer its Pings.
            timeout: seconds for the whole handshake.
            expect_server_key: if given, the relay must present this key.
            wait_server_info: wait for ServerInfo (the server is then known to
                have registered us); False returns right after ClientInfo.

        Raises:
            DerpTimeoutError: no handshake within ``timeout``.
            DerpConnectionClosed: the stream ended or broke.
            DerpProtocolError: malformed frames, a ServerInfo box that does not
                open, or ("server_key_mismatch") an unexpected server key.
            ValueError: a key is not 32 bytes.
        """
        check_key(private_key, "private key")
        if mesh_key is not None:
            check_key(mesh_key, "mesh key")
        decoder = fr.FrameDecoder(fr.MAX_FRAME_SIZE)
        ok = False
        try:
            with trio.fail_after(timeout):
                first = await _read_frame(stream, decoder)
                if not isinstance(first, fr.ServerKey):
                    raise DerpProtocolError(
                        ProtocolErrorReason.EXPECTED_SERVER_KEY, type(first).__name__
                    )
                if expect_server_key is not None and first.key != expect_server_key:
                    raise DerpProtocolError(ProtocolErrorReason.SERVER_KEY_MISMATCH)
                conn = cls(stream, private_key, first.key, decoder)
                info = build_client_info(
                    private_key, first.key, mesh_key=mesh_key, can_ack_pings=can_ack_pings
                )
                await conn._send(fr.encode(info))
                while wait_server_info and conn.server_info is None:
                    frame = await _read_frame(stream, decoder)
                    if isinstance(frame, fr.ServerInfo):
                        conn._open_server_info(frame)
                    else:
                        conn._early.append(frame)
            ok = True
            return conn
        except trio.TooSlowError:
            raise DerpTimeoutError("DERP handshake timed out") from None
        finally:
            if not ok:
                await trio.aclose_forcefully(stream)

    def _open_server_info(self, frame: fr.ServerInfo) -> None:
        self.server_info = open_server_info(frame, self._private_key, self.server_key)

    # ------------------------------------------------------------ sending

    async def _send(self, data: bytes) -> None:
        if self._closed:
            raise DerpConnectionClosed("connection closed")
        lock = self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            # Uncontended: skip Lock.acquire's scheduler yield (send_all yields anyway).
            lock.acquire_nowait()
            sock = self._sock
            if sock is not None:
                # Plain TCP: one write syscall, with send_all's checkpoints
                # (cancel point before, schedule point after) but none of its
                # wrapper layers; the socket's leftovers go through send_all.
                try:
                    await trio.lowlevel.checkpoint_if_cancelled()
                    fd = sock.fileno()
                    try:
                        n = os.write(fd, data) if fd >= 0 else 0
                    except BlockingIOError:
                        n = 0
                    except OSError as exc:
                        raise DerpConnectionClosed(f"send failed: {exc!r}") from exc
                    if n:
                        data = data[n:]
                except BaseException:
                    lock.release()
                    raise
                if not data:
                    try:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    finally:
                        lock.release()
                    return
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise DerpConnectionClosed(f"send failed: {exc!r}") from exc
        finally:
            lock.release()

    def write_now(self, data: bytes) -> int:
        """Write as much of ``data`` (encoded frames) as the socket takes now.

        Never blocks and never yields: for callers that queue the rest
        themselves (``derp.client``).  Returns the bytes written (0 when the
        socket buffer is full or the socket broke: a later ``send_raw``
        reports which), or -1 when a direct write is not possible at all
        (not a plain TCP stream, closed, or another task is sending).  Bytes
        partly written must be followed by the rest before any other frame.
        """
        sock = self._sock
        if sock is None or self._closed or self._send_lock.locked():
            return -1
        fd = sock.fileno()
        if fd < 0:
            return -1
        try:
            return os.write(fd, data)
        except OSError:
            return 0

    async def send_packet(self, dst: bytes, data: bytes) -> None:
        """Send one packet to the peer with public key ``dst``.

        Raises:
            ValueError: ``dst`` is not 32 bytes or ``data`` exceeds 64 KiB.
            DerpConnectionClosed: the connection is gone.
        """
        await self._send(fr.encode_send_packet(dst, data))

    async def send_packets(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Send several ``(dst, data)`` packets with one write.

        Raises:
            ValueError: a key is not 32 bytes or a packet exceeds 64 KiB.
            DerpConnectionClosed: the connection is gone.
        """
        parts: list[bytes] = []
        for dst, data in items:
            if len(dst) != fr.KEY_LEN:
                raise ValueError(f"dst must be {fr.KEY_LEN} bytes, got {len(dst)}")
            if len(data) > fr.MAX_PACKET_SIZE:
                raise ValueError(f"packet of {len(data)} bytes exceeds {fr.MAX_PACKET_SIZE}")
            parts += (_HDR.pack(_SEND, fr.KEY_LEN + len(data)), dst, data)
        if parts:
            await self._send(b"".join(parts))

    async def note_preferred(self, preferred: bool) -> None:
        """Tell the relay whether it is this client's home relay.

        Raises:
            DerpConnectionClosed: the connection is gone.
        """
        await self._send(fr.encode(fr.NotePreferred(preferred)))

    async def watch_conns(self) -> None:
        """Ask for PeerPresent/PeerGone about the relay's clients (mesh key required).

        Raises:
            DerpConnectionClosed: the connection is gone (also how a relay
                answers a client without the mesh key).
        """
        await self._send(fr.encode(fr.WatchConns()))

    async def forward_packet(self, src: bytes, dst: bytes, data: bytes) -> None:
        """Hand the relay a packet from ``src`` for its local client ``dst`` (mesh only).

        Raises:
            ValueError: a key is not 32 bytes or ``data`` exceeds 64 KiB.
            DerpConnectionClosed: the connection is gone.
        """
        await self._send(fr.encode_forward_packet(src, dst, data))

    async def forward_packets(self, items: Sequence[tuple[bytes, bytes, bytes]]) -> None:
        """Send several ``(src, dst, data)`` ForwardPackets with one write.

        Raises:
            ValueError: a key is not 32 bytes or a packet exceeds 64 KiB.
            DerpConnectionClosed: the connection is gone.
        """
        parts = [fr.encode_forward_packet(s, d, data) for s, d, data in items]
        if parts:
            await self._send(b"".join(parts))

    async def send_raw(self, data: bytes) -> None:
        """Write already-encoded frames (used by the mesh link's batching writer).

        Raises:
            DerpConnectionClosed: the connection is gone.
        """
        await self._send(data)

    async def close_peer(self, key: bytes) -> None:
        """Ask the relay to disconnect its client ``key`` (mesh only).

        Raises:
            ValueError: ``key`` is not 32 bytes.
            DerpConnectionClosed: the connection is gone.
        """
        await self._send(fr.encode(fr.ClosePeer(key)))

    async def ping(self, timeout: float = 5.0) -> float:
        """Measure the round trip to the relay, in seconds.

        Another task must be calling ``receive()`` meanwhile: that is where the
        Pong is read.

        Raises:
            DerpTimeoutError: no Pong within ``timeout``.
            DerpConnectionClosed: the connection is gone.
        """
        data = os.urandom(fr.PING_LEN)
        pending = _PendingPing()
        self._pings[data] = pending
        try:
            start = trio.current_time()
            await self._send(fr.encode(fr.Ping(data)))
            with trio.move_on_after(timeout):
                await pending.done.wait()
        finally:
            self._pings.pop(data, None)
        if pending.received_at is None:
            if self._closed:
                raise DerpConnectionClosed("connection closed during ping")
            raise DerpTimeoutError(f"no Pong within {timeout} s")
        return pending.received_at - start

    # ------------------------------------------------------------ receiving

    async def receive(self) -> Event:
        """Return the next event from the relay.

        Pings are answered here (and returned too); a Pong completes the
        matching ``ping()``; KeepAlives are returned so callers can see life.

        Raises:
            DerpConnectionClosed: EOF, or the stream broke or was closed.
            DerpProtocolError: the relay sent malformed frames.
        """
        while True:
            frame = self._early.popleft() if self._early else self._decoder.next_frame()
            if frame is None:
                sock = self._sock
                try:
                    if sock is not None and not replays_bytes(self.stream):
                        try:
                            data = await read_socket(sock, _RECV_BYTES)
                        except BlockingIOError:
                            continue
                    else:
                        data = await self.stream.receive_some(_RECV_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._fail_pings()
                    raise DerpConnectionClosed(f"receive failed: {exc!r}") from exc
                if not data:
                    self._fail_pings()
                    raise DerpConnectionClosed("relay closed the connection")
                self.last_received = trio.current_time()
                self._decoder.feed(data)
                continue
            if type(frame) is fr.RecvPacket:
                return frame
            if isinstance(frame, fr.Ping):
                await self._send(fr.encode(fr.Pong(frame.data)))
                return frame
            if isinstance(frame, fr.Pong):
                pending = self._pings.get(frame.data)
                if pending is not None:
                    pending.received_at = trio.current_time()
                    pending.done.set()
                return frame
            if isinstance(frame, fr.ServerInfo):
                self._open_server_info(frame)
                return frame
            if isinstance(frame, _EVENT_TYPES):
                return frame
            # Frames a server should not send (SendPacket, ClientInfo, ...) are skipped.

    def _fail_pings(self) -> None:
        self._closed = True
        for pending in self._pings.values():
            pending.done.set()

    async def aclose(self) -> None:
        """Close the connection and its stream; pending pings fail."""
        self._fail_pings()
        await trio.aclose_forcefully(self.stream)


async def _read_frame(stream: trio.abc.Stream, decoder: fr.FrameDecoder) -> fr.Frame:
    while True:
        frame = decoder.next_frame()
        if frame is not None:
            return frame
        try:
            data = await stream.receive_some(_RECV_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise DerpConnectionClosed(f"receive failed: {exc!r}") from exc
        if not data:
            raise DerpConnectionClosed("relay closed the connection during the handshake")
        decoder.feed(data)


def raw_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The TCP socket ``stream`` writes to unchanged, or None (TLS, WebSocket, memory)."""
    while isinstance(stream, PrefixedStream):  # replays received bytes only
        stream = stream.transport
    if type(stream) is trio.SocketStream:
        return stream.socket
    return None


def replays_bytes(stream: trio.abc.Stream) -> bool:
    """True while a ``PrefixedStream`` layer of ``stream`` still holds bytes to
    replay: until then, reading its socket directly would skip them."""
    while isinstance(stream, PrefixedStream):
        if stream._prefix:
            return True
        stream = stream.transport
    return False


async def read_socket(sock: trio.socket.SocketType, max_bytes: int) -> bytes | bytearray:
    """Wait until ``sock`` is readable, then read it with one syscall.

    Cheaper than ``SocketStream.receive_some`` for a reader that usually
    waits (no failed read before the wait, none of the wrapper layers); the
    caller must be the only reader and must handle ``BlockingIOError`` (a
    spurious wake-up: try again) and ``OSError`` (broken or closed).
    """
    await trio.lowlevel.wait_readable(sock)
    return os.read(sock.fileno(), max_bytes)
