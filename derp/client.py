"""The reconnecting DERP client the tunnel and agents use.

Theory of operation.  ``run()`` is the connection loop: dial (``derp.dial``:
DERP upgrade, or WebSocket when forced or fallen back -- and once fallen
back, WebSocket for good), handshake (``DerpConn``), announce the preferred
relay, then serve the connection with two tasks until it breaks:

- the reader turns frames into ``ClientEvent``s on a bounded memory channel.
  A consumer that does not keep up makes the reader wait, which pushes back
  through TCP onto the relay (whose own queue then drops, counted there).
  With ``set_packet_handler`` packets skip the channel: the reader calls the
  handler (the tunnel endpoint) directly, one task switch less per packet.
  120 s without any frame (the relay sends KeepAlives every ~60 s) counts as
  a dead connection.
- the writer takes every packet queued by ``send()`` since its last write
  and writes them with one ``send_packets`` call: under load, sends
  coalesce into large writes, which is what relayed throughput depends on.
  When nothing is queued and no write is in progress, ``send()`` writes the
  packet itself (``DerpConn.write_now``: one syscall, never blocking) and
  queues only an unwritten tail, which the writer sends first.

``send()`` never blocks forever: while disconnected it drops the packet and
counts it; while connected it waits only while more than ``max_pending_bytes``
are queued (backpressure), and a disconnect releases it.  Reconnects back off
exponentially with jitter (reset after a successful handshake); after a
Restarting frame the client instead redials every "reconnect in" seconds for
"try for" seconds, so a relay restart costs about its own downtime.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from derp import frames as fr
from derp.conn import DerpConn
from derp.dial import DialError, dial
from derp.errors import DerpConnectionClosed, DerpError, DerpProtocolError
from derp.keys import check_key, public_key, short

log = logging.getLogger(__name__)

DEAD_AFTER = 120.0  # seconds of silence before a connection counts as dead
_BATCH_BYTES = 1 << 19


@dataclass(frozen=True, slots=True)
class Packet:
    """A packet from peer ``src``."""

    src: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class PeerGone:
    """``key`` is no longer (or not) on the relay; ``reason`` is a ``PeerGoneReason``."""

    key: bytes
    reason: int


@dataclass(frozen=True, slots=True)
class Connected:
    """A (re)connection completed over ``transport`` to the relay ``server_key``."""

    transport: str
    server_key: bytes


ClientEvent = Packet | PeerGone | Connected


class DerpClient:
    """A DERP client that keeps itself connected to one relay.

    Args:
        url: the relay's base URL (``http(s)://host:port``; path ``/derp``).
        private_key: this node's 32-byte private key.
        force_websocket: use WebSocket from the start.
        ssl_context: for https relays.
        mesh_key: the mesh key (for relays meshing through this client).
        preferred: announce this relay as our home relay (NotePreferred).
        event_queue: events buffered before the reader waits for ``receive``.
        max_pending_bytes: queued send bytes above which ``send`` waits.
        min_backoff / max_backoff: reconnect delay bounds in seconds.
        dial_timeout: seconds for one dial + handshake.
        dead_after: seconds without any frame from the relay before the
            connection counts as dead and is redialed.
        write_timeout: seconds one batched write may take before the
            connection counts as dead (a relay that stopped reading).

    Raises:
        ValueError: a key is not 32 bytes.
    """

    def __init__(
        self,
        url: str,
        private_key: bytes,
        *,
        force_websocket: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        mesh_key: bytes | None = None,
        preferred: bool = True,
        event_queue: int = 1024,
        max_pending_bytes: int = 4 << 20,
        min_backoff: float = 0.1,
        max_backoff: float = 10.0,
        dial_timeout: float = 10.0,
        dead_after: float = DEAD_AFTER,
        write_timeout: float = 15.0,
    ) -> None:
        self.url = url
        self._private_key = check_key(private_key, "private key")
        self.public_key = public_key(private_key)
        self.force_websocket = force_websocket
        self.ssl_context = ssl_context
        self.mesh_key = None if mesh_key is None else check_key(mesh_key, "mesh key")
        self.preferred = preferred
        self.max_pending_bytes = max_pending_bytes
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.dial_timeout = dial_timeout
        self.dead_after = dead_after
        self.write_timeout = write_timeout
        self.transport: str | None = None  # "derp" | "websocket" once connected
        self.server_key: bytes | None = None
        self.connected = False
        self._events_in, self._events_out = trio.open_memory_channel[ClientEvent](event_queue)
        self._conn: DerpConn | None = None  # set by run() while connected
        self._pending: deque[tuple[bytes, bytes]] = deque()  # owned by send()/writer
        self._pending_bytes = 0
        self._wake = trio.Event()  # writer: something was queued
        # The unwritten tail of a frame send() wrote only partly: it goes out
        # before anything else (owned by send()/writer).
        self._head: bytes | None = None
        # set_packet_handler: packets go here instead of to receive().
        self._packet_handler: Callable[[bytes, bytes], None] | None = None
        self._space = trio.Event()  # senders: the writer took a batch
        self._restart_in: tuple[float, float] | None = None  # (reconnect in, try for)
        # Counters.
        self.connects = 0
        self.packets_sent = 0
        self.bytes_sent = 0
        self.packets_received = 0
        self.bytes_received = 0
        self.dropped_disconnected = 0
        self.dial_failures = 0

    # ------------------------------------------------------------ public

    async def send(self, dst: bytes, data: bytes) -> None:
        """Queue one packet for ``dst``; dropped (and counted) while disconnected.

        Raises:
            ValueError: ``dst`` is not 32 bytes or ``data`` exceeds 64 KiB.
        """
        if len(dst) != fr.KEY_LEN:
            raise ValueError(f"dst must be {fr.KEY_LEN} bytes, got {len(dst)}")
        if len(data) > fr.MAX_PACKET_SIZE:
            raise ValueError(f"packet of {len(data)} bytes exceeds {fr.MAX_PACKET_SIZE}")
        conn = self._conn
        while conn is not None and self._pending_bytes > self.max_pending_bytes:
            await self._space.wait()
            conn = self._conn
        if conn is None:
            self.dropped_disconnected += 1
            await trio.lowlevel.checkpoint()
            return
        if not self._pending and self._head is None:
            # Nothing queued and the writer idle: write from this task now (one
            # syscall, no writer wake-up); the writer gets only what the
            # socket did not take.
            frame = fr.encode_send_packet(dst, data)
            n = conn.write_now(frame)
            if n == len(frame):
                self.packets_sent += 1
                self.bytes_sent += len(data)
                await trio.lowlevel.checkpoint()
                return
            if n > 0:
                self.packets_sent += 1
                self.bytes_sent += len(data)
                self._head = frame[n:]
                self._pending_bytes += len(frame) - n
                self._wake.set()
                await trio.lowlevel.checkpoint()
                return
        self._pending.append((dst, data))
        self._pending_bytes += len(data)
        self._wake.set()
        await trio.lowlevel.checkpoint()

    def stats(self) -> dict[str, int]:
        """The counters, for logs and metrics."""
        return {
            "connected": int(self.connected),
            "connects": self.connects,
            "dial_failures": self.dial_failures,
            "packets_sent": self.packets_sent,
            "bytes_sent": self.bytes_sent,
            "packets_received": self.packets_received,
            "bytes_received": self.bytes_received,
            "dropped_disconnected": self.dropped_disconnected,
            "pending_bytes": self._pending_bytes,
        }

    def set_packet_handler(self, handler: Callable[[bytes, bytes], None] | None) -> None:
        """Deliver packets by calling ``handler(src, data)`` instead of via ``receive``.

        The handler runs in the reader task, in order, and must neither block
        nor raise (an exception is logged and the packet dropped); PeerGone
        and Connected still come from ``receive``.  This saves a task switch
        per packet for consumers that can handle input synchronously (the
        tunnel).  None restores delivery through ``receive``.
        """
        self._packet_handler = handler

    async def receive(self) -> ClientEvent:
        """The next event: a packet, a peer gone, or a (re)connection."""
        return await self._events_out.receive()

    async def ping(self, timeout: float = 5.0) -> float:
        """Round-trip time to the relay in seconds.

        Raises:
            DerpConnectionClosed: not connected, or the connection dropped.
            DerpTimeoutError: no Pong within ``timeout``.
        """
        conn = self._conn
        if conn is None:
            raise DerpConnectionClosed("not connected")
        return await conn.ping(timeout)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stay connected until cancelled; ``task_status.started()`` after the first handshake.

        Never raises for network trouble (it logs and redials).
        """
        started = False
        delay = self.min_backoff
        # After a Restarting frame: retry every `steady` s until `steady_until`
        # instead of backing off (the relay said it is coming back).
        steady: float | None = None
        steady_until = 0.0
        while True:
            conn = await self._connect()
            if conn is None:
                self.dial_failures += 1
                if steady is not None and trio.current_time() < steady_until:
                    await trio.sleep(steady)
                    continue
                await trio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.max_backoff)
                continue
            delay = self.min_backoff
            steady = None
            self._restart_in = None
            try:
                self._conn = conn
                self.connected = True
                self.connects += 1
                self.server_key = conn.server_key
                assert self.transport is not None
                log.info("derp client %s: connected to %s over %s",
                         short(self.public_key), self.url, self.transport)
                await self._events_in.send(Connected(self.transport, conn.server_key))
                if not started:
                    started = True
                    task_status.started()
                await self._serve(conn)
            finally:
                self._disconnected()
                with trio.CancelScope(shield=True):
                    await conn.aclose()
            hint = self._take_restart_hint()
            if hint is not None:
                steady, try_for = hint
                steady_until = trio.current_time() + try_for
                await trio.sleep(steady)
            else:
                await trio.sleep(self.min_backoff * random.uniform(0.5, 1.0))

    # ------------------------------------------------------------ internals

    async def _connect(self) -> DerpConn | None:
        try:
            stream, transport = await dial(
                self.url,
                force_websocket=self.force_websocket,
                ssl_context=self.ssl_context,
                timeout=self.dial_timeout,
            )
        except DialError as exc:
            log.info("derp client %s: dial %s failed: %s", short(self.public_key), self.url, exc)
            return None
        if transport == "websocket" and not self.force_websocket:
            log.info("derp client: %s blocks the DERP upgrade; staying on WebSocket", self.url)
            self.force_websocket = True
        try:
            conn = await DerpConn.handshake(
                stream, self._private_key, mesh_key=self.mesh_key, timeout=self.dial_timeout
            )
            if self.preferred:
                await conn.note_preferred(True)
        except (DerpError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await trio.aclose_forcefully(stream)
            log.info("derp client: handshake with %s failed: %s", self.url, exc)
            return None
        self.transport = transport
        return conn

    def _take_restart_hint(self) -> tuple[float, float] | None:
        hint, self._restart_in = self._restart_in, None
        return hint

    def _disconnected(self) -> None:
        self._conn = None
        self.connected = False
        self.dropped_disconnected += len(self._pending)
        self._pending.clear()
        self._head = None
        self._pending_bytes = 0
        self._space.set()
        self._space = trio.Event()

    async def _serve(self, conn: DerpConn) -> None:
        async with trio.open_nursery() as nursery:

            async def writer() -> None:
                try:
                    await self._writer(conn)
                except DerpConnectionClosed as exc:
                    log.info("derp client: send to %s failed: %s", self.url, exc)
                nursery.cancel_scope.cancel()

            async def watchdog() -> None:
                # One sleeping task instead of a deadline per received frame.
                while True:
                    left = conn.last_received + self.dead_after - trio.current_time()
                    if left <= 0:
                        log.info("derp client: %s silent for %.0f s; reconnecting",
                                 self.url, self.dead_after)
                        nursery.cancel_scope.cancel()
                        return
                    await trio.sleep(left)

            nursery.start_soon(writer)
            nursery.start_soon(watchdog)
            try:
                await self._reader(conn)
            except (DerpConnectionClosed, DerpProtocolError) as exc:
                log.info("derp client: connection to %s ended: %s", self.url, exc)
            nursery.cancel_scope.cancel()

    async def _reader(self, conn: DerpConn) -> None:
        while True:
            event = await conn.receive()
            if type(event) is fr.RecvPacket:
                self.packets_received += 1
                self.bytes_received += len(event.data)
                handler = self._packet_handler
                if handler is not None:
                    try:
                        handler(event.src, event.data)
                    except Exception:
                        log.exception("derp client: packet handler failed; packet dropped")
                    continue
                packet = Packet(event.src, event.data)
                try:
                    # No yield when the consumer keeps up: receive() yields anyway.
                    self._events_in.send_nowait(packet)
                except trio.WouldBlock:
                    await self._events_in.send(packet)
            elif isinstance(event, fr.PeerGone):
                await self._events_in.send(PeerGone(event.key, int(event.reason)))
            elif isinstance(event, fr.Restarting):
                self._restart_in = (
                    max(event.reconnect_in_ms / 1000, 0.01),
                    event.try_for_ms / 1000,
                )
                log.info("derp client: %s is restarting", self.url)
            elif isinstance(event, fr.Health) and event.problem:
                log.warning("derp client: relay %s health: %s", self.url, event.problem)

    async def _writer(self, conn: DerpConn) -> None:
        while True:
            while not self._pending and self._head is None:
                self._wake = trio.Event()
                await self._wake.wait()
            head, self._head = self._head, None
            if head is not None:
                with trio.move_on_after(self.write_timeout) as stuck:
                    await conn.send_raw(head)
                self._pending_bytes -= len(head)
                if stuck.cancelled_caught:
                    raise DerpConnectionClosed(f"a write took over {self.write_timeout} s")
                if not self._pending:
                    self._space.set()
                    self._space = trio.Event()
                    continue
            batch: list[tuple[bytes, bytes]] = []
            size = 0
            while self._pending and size < _BATCH_BYTES:
                item = self._pending.popleft()
                batch.append(item)
                size += len(item[1])
            self._pending_bytes -= size
            self._space.set()
            self._space = trio.Event()
            with trio.move_on_after(self.write_timeout) as stuck:
                await conn.send_packets(batch)
            if stuck.cancelled_caught:
                self.dropped_disconnected += len(batch)
                raise DerpConnectionClosed(f"a write took over {self.write_timeout} s")
            self.packets_sent += len(batch)
            self.bytes_sent += size
