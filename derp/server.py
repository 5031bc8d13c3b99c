"""DERP relay server core (trio): one connection per ``serve()`` call.

Theory of operation
-------------------
``serve(stream)`` runs one whole DERP connection on an already-upgraded byte
stream: it sends ServerKey, waits (``handshake_timeout``) for ClientInfo,
opens its box, registers the client under its public key, sends ServerInfo,
then runs two tasks in a nursery:

* the reader (the task that called ``serve``) decodes frames and routes
  SendPacket to the destination's queue, a mesh link (ForwardPacket), or
  answers PeerGone(not here).  The reader never waits on another client: a
  full destination queue drops its oldest packet (counted ``queue_full``).
  With ``rate_limit`` it sleeps after reading to pay a token bucket, which
  pushes back on the sender through TCP (mesh peers are exempt).
* on plain TCP, the reader itself writes what one received chunk queued for
  a destination whose writer is idle, at once and without blocking (one
  ``os.write``; ``_write_now``): no writer wake-up on the latency path.
  Whatever the socket does not take (or an error) stays queued for the
  writer, so timeouts, bounds and drop counts are the writer's as before.
* the writer sleeps until something is queued, then takes everything queued
  (control frames first, packets up to ``_BATCH_BYTES``), joins it into one
  buffer and makes one ``send_all``: write batching.  A write that does not
  finish within ``write_timeout`` closes the connection, so a frozen receiver
  costs only its own queue.  Idle for ``keepalive_interval`` (with jitter): it
  writes a KeepAlive.

A second connection with the same key replaces the first (the old one is
cancelled; its queued packets move to the new one).  When a client leaves,
every local client that had sent to it gets PeerGone(disconnected), and mesh
watchers get PeerGone.  Nothing a peer does makes ``serve`` raise: protocol
errors close that one connection and are counted by reason in ``metrics``.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Protocol

import trio

from derp import frames as fr
from derp.conn import read_socket, replays_bytes
from derp.errors import DerpProtocolError, ProtocolErrorReason
from derp.handshake import build_server_info, open_client_info, server_key_frame
from derp.keys import check_key, public_key
from derp.metrics import CloseReason, DropReason, Metrics
from derp.server_client import Client, TokenBucket

log = logging.getLogger(__name__)

_RECV_BYTES = 1 << 18  # one receive_some
_BATCH_BYTES = 1 << 19  # most bytes joined into one send_all
_KEEPALIVE = fr.encode(fr.KeepAlive())
_MAX_SENDERS = 1024  # prune a client's sender set of departed keys beyond this
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_SendPacket = fr.SendPacket
_ForwardPacket = fr.ForwardPacket
_recv_header = fr.recv_packet_header
_forward_header = fr.forward_packet_header
_RECV_HEADER_LEN = len(fr.recv_packet_header(bytes(fr.KEY_LEN), 0))


class PacketForwarder(Protocol):
    """What the server calls to reach a client connected to another relay.

    A mesh link (``derp.mesh.MeshLink``) implements it and teaches the server
    which keys it reaches (``learn_remote`` / ``forget_remote``); the server
    never needs to know more about it, so the mesh depends on the server and
    not the other way round (Tailscale's derpserver ``PacketForwarder``).
    """

    def forward(self, src: bytes, dst: bytes, data: bytes) -> None:
        """Queue one packet for ``dst``; must never block (called by a reader task)."""


class DerpServer:
    """A DERP relay: a registry of clients and the code that serves each connection.

    Args:
        private_key: the server's 32-byte Curve25519 private key.
        mesh_key: 32 bytes shared by meshed relays; clients presenting it may
            WatchConns, ForwardPacket and ClosePeer.
        queue_size: packets queued per client before the oldest is dropped.
        keepalive_interval: seconds between KeepAlives on an idle connection.
        handshake_timeout: seconds a new connection has to send ClientInfo.
        write_timeout: seconds one write may take before the connection is
            closed (four times that for mesh peers).
        rate_limit: bytes per second each non-mesh client may send, enforced by
            backpressure; None for unlimited.
        rate_burst: token bucket depth in bytes (default: max(rate_limit, 256 KiB)).

    Raises:
        ValueError: a key is not 32 bytes, or a limit is not positive.
    """

    def __init__(
        self,
        private_key: bytes,
        *,
        mesh_key: bytes | None = None,
        queue_size: int = 512,
        keepalive_interval: float = 60.0,
        handshake_timeout: float = 10.0,
        write_timeout: float = 5.0,
        rate_limit: int | None = None,
        rate_burst: int | None = None,
    ) -> None:
        self._private_key = check_key(private_key, "private key")
        self.public_key: bytes = public_key(private_key)
        self.mesh_key = None if mesh_key is None else check_key(mesh_key, "mesh key")
        if queue_size < 1 or keepalive_interval <= 0 or handshake_timeout <= 0:
            raise ValueError("queue_size, keepalive_interval and handshake_timeout must be > 0")
        if write_timeout <= 0 or (rate_limit is not None and rate_limit <= 0):
            raise ValueError("write_timeout and rate_limit must be > 0")
        self.queue_size = queue_size
        self.keepalive_interval = keepalive_interval
        self.handshake_timeout = handshake_timeout
        self.write_timeout = write_timeout
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst or max(rate_limit or 0, 256 << 10)
        self.metrics = Metrics()
        self._clients: dict[bytes, Client] = {}
        self._watchers: set[Client] = set()
        # Keys present on mesh siblings -> the forwarder that reaches them,
        # and the local clients that sent to each (told PeerGone when it leaves).
        self._routes: dict[bytes, PacketForwarder] = {}
        self._remote_senders: dict[bytes, set[bytes]] = {}
        self._closing = False

    # ------------------------------------------------------------ public

    def has_client(self, key: bytes) -> bool:
        """True if a client with this public key is connected here."""
        return key in self._clients

    def client_keys(self) -> list[bytes]:
        """Public keys of the clients connected here now."""
        return list(self._clients)

    def has_remote(self, key: bytes) -> bool:
        """True if ``key`` is known to be connected to a mesh sibling."""
        return key in self._routes

    async def serve(self, stream: trio.abc.Stream, *, remote: str = "") -> None:
        """Run one DERP connection on ``stream`` until it ends, then close the stream.

        Returns normally however the connection ends (peer misbehaviour, broken
        stream, replacement, server close); only cancellation propagates.
        """
        try:
            if self._closing:
                self.metrics.close(CloseReason.SERVER_CLOSING)
                return
            await self._serve(stream, remote)
        except DerpProtocolError as exc:
            self.metrics.protocol_errors[exc.reason] += 1
            self.metrics.close(CloseReason.PROTOCOL_ERROR)
            log.info("derp %s: closed: %s", remote, exc)
        except _STREAM_ERRORS as exc:
            self.metrics.close(CloseReason.READ_ERROR)
            log.debug("derp %s: stream error: %r", remote, exc)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def close(
        self,
        *,
        restarting: bool = False,
        reconnect_in: float = 1.0,
        try_for: float = 60.0,
        grace: float = 2.0,
    ) -> None:
        """Stop accepting connections and end every current one.

        With ``restarting``, each client first gets a Restarting frame
        (reconnect in ``reconnect_in`` s, keep trying for ``try_for`` s) and up
        to ``grace`` seconds to have its queue written.
        """
        self._closing = True
        clients = list(self._clients.values())
        if restarting:
            frame = fr.encode(fr.Restarting(int(reconnect_in * 1000), int(try_for * 1000)))
            for c in clients:
                self._queue_control(c, frame)
            # A bounded poll: a per-client "drained" event would cost memory on
            # every connection for the sake of one shutdown.
            with trio.move_on_after(grace):
                while any(not c.closed and not c.idle() for c in clients):  # noqa: ASYNC110
                    await trio.sleep(0.01)
        for c in clients:
            self.metrics.close(CloseReason.SERVER_CLOSING)
            c.scope.cancel()
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------ connection

    async def _serve(self, stream: trio.abc.Stream, remote: str) -> None:
        decoder = fr.FrameDecoder(fr.MAX_FRAME_SIZE)
        info: fr.Frame | None = None
        with trio.move_on_after(self.handshake_timeout):
            await stream.send_all(fr.encode(server_key_frame(self.public_key)))
            while info is None:
                info = decoder.next_frame()
                if info is None:
                    data = await stream.receive_some(_RECV_BYTES)
                    if not data:
                        self.metrics.close(CloseReason.EOF)
                        return
                    decoder.feed(data)
        if info is None:
            raise DerpProtocolError(ProtocolErrorReason.HANDSHAKE_TIMEOUT)
        if not isinstance(info, fr.ClientInfo):
            raise DerpProtocolError(ProtocolErrorReason.EXPECTED_CLIENT_INFO, type(info).__name__)
        payload = open_client_info(info, self._private_key)
        if self._closing:
            self.metrics.close(CloseReason.SERVER_CLOSING)
            return
        can_mesh = payload.mesh_key_matches(self.mesh_key)
        c = Client(
            payload.key, stream, remote, can_mesh=can_mesh, can_ack_pings=payload.can_ack_pings
        )
        extra: dict[str, object] = {}
        if self.rate_limit and not can_mesh:
            extra = {
                "TokenBucketBytesPerSecond": self.rate_limit,
                "TokenBucketBytesBurst": self.rate_burst,
            }
        server_info = fr.encode(build_server_info(self._private_key, c.key, extra=extra))
        with c.scope:
            self._register(c)
            try:
                with trio.move_on_after(self._write_timeout(c)) as cs:
                    await stream.send_all(server_info)
                if cs.cancelled_caught:
                    self.metrics.close(CloseReason.WRITE_TIMEOUT)
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, c)
                    await self._reader(c, decoder)
                    nursery.cancel_scope.cancel()
            finally:
                self._unregister(c)

    def _write_timeout(self, c: Client) -> float:
        return self.write_timeout * (4 if c.can_mesh else 1)

    def _register(self, c: Client) -> None:
        m = self.metrics
        old = self._clients.get(c.key)
        self._clients[c.key] = c
        m.clients_total += 1
        m.clients_connected = len(self._clients)
        if c.can_mesh:
            m.mesh_peers += 1
        if old is not None:
            # Last writer wins; queued packets follow the key to the new connection.
            m.duplicate_clients += 1
            m.close(CloseReason.REPLACED)
            c.packets.extend(old.packets)
            old.packets.clear()
            c.senders |= old.senders
            old.replaced = True
            old.scope.cancel()
            if c.packets:
                c.wake.set()
        elif not c.can_mesh:
            present = fr.encode(fr.PeerPresent(c.key))
            for w in self._watchers:
                self._queue_control(w, present)

    def _unregister(self, c: Client) -> None:
        m = self.metrics
        c.closed = True
        if c.can_mesh:
            m.mesh_peers -= 1
        self._watchers.discard(c)
        if c.packets:
            m.drop(DropReason.DISCONNECTED, len(c.packets))
            c.packets.clear()
        c.control.clear()
        if self._clients.get(c.key) is not c:
            return  # replaced by a newer connection with the same key
        del self._clients[c.key]
        m.clients_connected = len(self._clients)
        gone = fr.encode(fr.PeerGone(c.key, fr.PeerGoneReason.DISCONNECTED))
        for key in c.senders:
            sender = self._clients.get(key)
            if sender is not None:
                self._queue_control(sender, gone)
        if not c.can_mesh:
            for w in self._watchers:
                self._queue_control(w, gone)

    # ------------------------------------------------------------ queues

    def _queue_control(self, c: Client, frame: bytes) -> None:
        # Control frames are small; bound them only for non-mesh clients (a mesh
        # watcher must see every PeerPresent/PeerGone).
        if not c.can_mesh and len(c.control) >= 4 * self.queue_size:
            self.metrics.drop(DropReason.CONTROL_QUEUE_FULL)
            return
        c.control.append(frame)
        if not c.wake.is_set():
            c.wake.set()

    def _note_sender(self, dst: Client, key: bytes) -> None:
        # Remember who sent to dst (for PeerGone); prune departed senders now and
        # then so a long-lived client's set stays bounded by the live clients.
        if len(dst.senders) >= max(_MAX_SENDERS, 2 * len(self._clients)):
            dst.senders.intersection_update(self._clients)
        dst.senders.add(key)

    def _deliver(self, dst: Client, src: bytes, data: bytes) -> None:
        """Queue a RecvPacket for ``dst`` (drop-oldest when full). Never blocks."""
        q = dst.packets
        if len(q) >= self.queue_size:
            q.popleft()
            self.metrics.drops[DropReason.QUEUE_FULL] += 1
        q.append((_recv_header(src, len(data)), data))
        if not dst.wake.is_set():
            dst.wake.set()

    # ------------------------------------------------------------ writer

    def _write_now(self, c: Client) -> None:
        """Write ``c``'s queue from the calling reader task, without blocking.

        The latency path: a relayed packet leaves in the same task step that
        read it, with no wake-up of the writer task and no scheduler round.
        Only while the writer is idle (nothing else writes the socket) and as
        much as the socket buffer takes at once; whatever is left, or an
        error, goes to the writer task, which applies the write timeout and
        does the accounting, exactly as if it had been queued.
        """
        sock = c.sock
        fd = -1 if sock is None or c.busy or c.closed else sock.fileno()
        if fd < 0:
            if not c.wake.is_set():
                c.wake.set()
            return
        packets, control = c.packets, c.control
        parts: list[bytes] = list(control)
        control.clear()
        control_size = size = sum(map(len, parts))
        taken: list[tuple[bytes, bytes]] = []
        while packets and size < _BATCH_BYTES:
            item = packets.popleft()
            taken.append(item)
            parts += item
            size += len(item[0]) + len(item[1])
        data = b"".join(parts)
        try:
            n = os.write(fd, data)
        except OSError:  # full buffer, or broken: the writer finds out which
            n = 0
        if n == len(data):
            m = self.metrics
            m.packets_out += len(taken)
            m.bytes_out += size - control_size - _RECV_HEADER_LEN * len(taken)
            return
        # Put back what was not written, in order, packets as packets (so the
        # writer's drop accounting still counts them): a partly written
        # packet goes back as its unwritten tail.
        if n < control_size:
            control.appendleft(data[n:control_size])
            packets.extendleft(reversed(taken))
        else:
            pos = control_size
            done = 0
            for header, payload in taken:
                end = pos + len(header) + len(payload)
                if end > n:
                    break
                pos = end
                done += 1
            rest = taken[done:]
            if n > pos:
                header, payload = rest[0]
                rest[0] = (b"", data[n : pos + len(header) + len(payload)])
            packets.extendleft(reversed(rest))
            m = self.metrics
            m.packets_out += done
            m.bytes_out += sum(len(p) for _, p in taken[:done])
        if not c.wake.is_set():
            c.wake.set()

    async def _writer(self, c: Client) -> None:
        m = self.metrics
        stream = c.stream
        # Jitter once per connection so keepalives of many clients spread out.
        interval = self.keepalive_interval * random.uniform(0.9, 1.1)
        timeout = self._write_timeout(c)
        packets = c.packets
        control = c.control
        keepalive_at = trio.current_time() + interval
        while True:
            # One cancel scope serves both timers (cheaper than a scope per
            # wait and per write): its deadline is the keepalive time while
            # idle and the write deadline while writing.  It fires rarely; a
            # fresh one is made after each keepalive.
            with trio.CancelScope(deadline=keepalive_at) as scope:
                while True:
                    if not packets and not control:
                        scope.deadline = keepalive_at
                        c.wake = trio.Event()
                        await c.wake.wait()
                        if not packets and not control:
                            continue  # a reader wrote it already (_write_now)
                    parts: list[bytes] = []
                    size = 0
                    while control:
                        frame = control.popleft()
                        parts.append(frame)
                        size += len(frame)
                    npk = 0
                    data_bytes = 0
                    while packets and size < _BATCH_BYTES:
                        header, data = packets.popleft()
                        parts.append(header)
                        parts.append(data)
                        size += len(header) + len(data)
                        data_bytes += len(data)
                        npk += 1
                    now = trio.current_time()
                    scope.deadline = now + timeout
                    c.busy = True
                    try:
                        await stream.send_all(b"".join(parts))
                    except _STREAM_ERRORS:
                        m.drop(DropReason.WRITE_ERROR, npk)
                        m.close(CloseReason.WRITE_ERROR)
                        c.scope.cancel()
                        return
                    except trio.Cancelled:
                        if c.replaced:
                            # The newer connection got the queue, but not the
                            # packets this write had taken off it.
                            m.drop(DropReason.DUPLICATE_CLIENT, npk)
                            c.busy = False
                        raise
                    c.busy = False
                    m.packets_out += npk
                    m.bytes_out += data_bytes
                    keepalive_at = now + interval
            if c.busy:
                m.drop(DropReason.WRITE_ERROR, npk)
                m.close(CloseReason.WRITE_TIMEOUT)
                c.scope.cancel()
                return
            control.append(_KEEPALIVE)
            keepalive_at = trio.current_time() + interval

    # ------------------------------------------------------------ reader

    async def _reader(self, c: Client, decoder: fr.FrameDecoder) -> None:
        """Read and route frames until EOF; errors close this connection."""
        try:
            await self._read_loop(c, decoder)
        except DerpProtocolError as exc:
            self.metrics.protocol_errors[exc.reason] += 1
            self.metrics.close(CloseReason.PROTOCOL_ERROR)
            log.info("derp %s: closed: %s", c.remote, exc)
        except _STREAM_ERRORS:
            self.metrics.close(CloseReason.READ_ERROR)

    async def _read_loop(self, c: Client, decoder: fr.FrameDecoder) -> None:
        m = self.metrics
        stream = c.stream
        clients = self._clients
        routes = self._routes
        bucket: TokenBucket | None = None
        if self.rate_limit and not c.can_mesh:
            bucket = TokenBucket(self.rate_limit, self.rate_burst, trio.current_time())
        next_frame = decoder.next_frame
        key = c.key
        queue_size = self.queue_size
        drops = m.drops
        touched: list[Client] = []  # destinations this chunk queued to, to write now
        sock = c.sock  # plain TCP: read it directly (see derp.conn.read_socket)
        while True:
            while (frame := next_frame()) is not None:
                if type(frame) is _SendPacket:
                    data = frame.data
                    m.packets_in += 1
                    m.bytes_in += len(data)
                    dst = clients.get(frame.dst)
                    if dst is not None:
                        if key not in dst.senders:
                            self._note_sender(dst, key)
                        q = dst.packets
                        if len(q) >= queue_size:
                            q.popleft()
                            drops[DropReason.QUEUE_FULL] += 1
                        q.append((_recv_header(key, len(data)), data))
                        if dst.sock is not None and not dst.busy:
                            # Written by this task below, after the whole chunk.
                            if dst not in touched:
                                touched.append(dst)
                        elif not dst.wake.is_set():
                            dst.wake.set()
                        continue
                    link = routes.get(frame.dst)
                    if link is not None:
                        self._remote_senders[frame.dst].add(key)
                        link.forward(key, frame.dst, data)
                        continue
                    m.drops[DropReason.UNKNOWN_DEST] += 1
                    self._queue_control(
                        c, fr.encode(fr.PeerGone(frame.dst, fr.PeerGoneReason.NOT_HERE))
                    )
                else:
                    self._handle_other(c, frame)
            if touched:
                for dst in touched:
                    self._write_now(dst)
                touched.clear()
            if sock is not None and not replays_bytes(stream):
                try:
                    received = await read_socket(sock, _RECV_BYTES)
                except BlockingIOError:
                    continue
            else:
                received = await stream.receive_some(_RECV_BYTES)
            if not received:
                m.close(CloseReason.EOF)
                return
            if bucket is not None:
                delay = bucket.take(len(received), trio.current_time())
                if delay > 0:
                    await trio.sleep(delay)
            decoder.feed(received)

    def _handle_other(self, c: Client, frame: fr.Frame) -> None:
        m = self.metrics
        if isinstance(frame, fr.Ping):
            self._queue_control(c, fr.encode(fr.Pong(frame.data)))
        elif isinstance(frame, fr.NotePreferred):
            c.preferred = frame.preferred
        elif isinstance(frame, fr.ForwardPacket):
            if not c.can_mesh:
                raise DerpProtocolError(
                    ProtocolErrorReason.MESH_FORBIDDEN, "ForwardPacket without mesh key"
                )
            m.packets_in += 1
            m.bytes_in += len(frame.data)
            dst = self._clients.get(frame.dst)
            if dst is None or dst.can_mesh:
                m.drops[DropReason.UNKNOWN_DEST_ON_FORWARD] += 1
            else:
                self._deliver(dst, frame.src, frame.data)
        elif isinstance(frame, fr.WatchConns):
            if not c.can_mesh:
                raise DerpProtocolError(
                    ProtocolErrorReason.MESH_FORBIDDEN, "WatchConns without mesh key"
                )
            if not c.watching:
                c.watching = True
                self._watchers.add(c)
                for other in self._clients.values():
                    if not other.can_mesh:
                        self._queue_control(c, fr.encode(fr.PeerPresent(other.key)))
        elif isinstance(frame, fr.ClosePeer):
            if not c.can_mesh:
                raise DerpProtocolError(
                    ProtocolErrorReason.MESH_FORBIDDEN, "ClosePeer without mesh key"
                )
            target = self._clients.get(frame.key)
            if target is not None and not target.can_mesh:
                m.close(CloseReason.CLOSED_BY_MESH)
                target.scope.cancel()
        # Anything else a client may not send (RecvPacket, ServerKey, a second
        # ClientInfo, Pong to a ping we never sent, ...) is ignored, as the
        # reference server skips frames it does not handle.

    # ------------------------------------------------------------ mesh hooks

    def learn_remote(self, key: bytes, link: PacketForwarder) -> None:
        """A mesh sibling reached by ``link`` has ``key`` connected."""
        if key == self.public_key:
            return
        self._routes[key] = link
        self._remote_senders.setdefault(key, set())

    def forget_remote(self, key: bytes, link: PacketForwarder) -> None:
        """``key`` left the sibling behind ``link``: tell local clients that sent to it.

        Ignored if ``key`` is reached through another link by now (it moved).
        """
        if self._routes.get(key) is not link:
            return
        del self._routes[key]
        senders = self._remote_senders.pop(key, None)
        if senders and key not in self._clients:
            gone = fr.encode(fr.PeerGone(key, fr.PeerGoneReason.DISCONNECTED))
            for s in senders:
                sender = self._clients.get(s)
                if sender is not None:
                    self._queue_control(sender, gone)

    def forget_link(self, link: PacketForwarder) -> None:
        """A mesh link went down: forget every peer learned through it."""
        for key in [k for k, v in self._routes.items() if v is link]:
            self.forget_remote(key, link)
