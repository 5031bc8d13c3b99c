"""One tunnel session per peer: crypto channel + reliable streams + paths.

Theory of operation
-------------------
A ``Session`` glues three sans-IO pieces to trio: the ``Channel``
(handshake, keys), the ``Connection`` (streams, acks, flow control) and the
paths that reach the peer (a relay path, and direct TCP links when the peer
advertised endpoints). Its tasks, all in one nursery:

* the *sender*: waits for a wake-up, then sends handshake messages and as
  many sealed packets as the connection has ready, over the current path.
  Everything queued while it was busy goes out together in the next round,
  so bulk data fills ~64 KiB records and a lone keystroke leaves at once.
  A writing task that finds no flush running sends its own bytes directly
  (``flush_now``: one task switch less per write); only one task flushes at
  a time (``_flushing``), and it loops until nothing is left;
* the *timer*: runs the connection's retransmit/keepalive/dead-peer timers,
  the channel's handshake retries, delayed ACKs and held runt tails. It
  sleeps in a cancel scope whose deadline other tasks may move earlier, so
  arming a timer costs no task switch;
* one *dialer* per advertised direct endpoint: connects in the background,
  probes with an empty record, reads the link, redials after failures.

Datagrams come in through ``datagram_received`` (called by the endpoint's
path readers, never blocking). Path choice: a *confirmed* direct link (one
that delivered an authenticated datagram) beats the relay; the relay beats an
unconfirmed link. Any change of the current path makes the connection resend
everything in flight at once. A new handshake that shows a different peer
instance id means the peer restarted: old streams fail, a fresh connection
starts.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import trio

from tunnel import direct
from tunnel.channel import Channel
from tunnel.connection import (
    Config,
    Connection,
    PeerClosed,
    PongReceived,
    StreamPhase,
    StreamRequest,
)
from tunnel.errors import (
    CloseReason,
    PeerTimeoutError,
    ResetReason,
    SessionClosedError,
    StreamRefusedError,
    TunnelError,
)
from tunnel.frames import ErrorCode
from tunnel.path import Datagram, PacketPath
from tunnel.record import Limits
from tunnel.stream import TunnelStream

# Called for each stream the peer opens: returns True, or a refusal reason.
OnRequest = Callable[["Session", int, str], "bool | str"]

log = logging.getLogger(__name__)

REDIAL_DELAY = 1.0
MAX_REDIAL_DELAY = 30.0
DIAL_TIMEOUT = 5.0
# With data in flight and nothing heard for this long, start a new handshake:
# if the peer restarted (and dropped our records as unknown), its answer
# carries a new instance id and the session recovers at once instead of
# waiting for the dead-peer timeout. A live peer just rekeys.
REHANDSHAKE_AFTER = 3.0
# How long an ACK may wait for the application's answer to carry it.
ACK_DELAY = 0.002
# A bulk writer's runt tail (< HOLD_TAIL bytes after a full packet) waits at
# most HOLD_DELAY for the next write to fill its packet.
HOLD_TAIL = 16384
HOLD_DELAY = 0.001


class Session:
    """The tunnel to one peer (see module docstring); the ``StreamHost`` of its streams.

    Attributes:
        peer_key: the peer's node key.
        error: why the session ended, once it has.
    """

    def __init__(
        self,
        *,
        local_private: bytes,
        local_public: bytes,
        peer_key: bytes,
        instance: bytes,
        relay: PacketPath | None,
        on_request: OnRequest,
        config: Config | None = None,
        limits: Limits | None = None,
        last_timestamps: dict[bytes, bytes] | None = None,
        handshake_timeout: float = 15.0,
    ) -> None:
        self.peer_key = peer_key
        self.local_public = local_public
        self.config = config or Config()
        self._on_request = on_request
        self.channel = Channel(
            local_private,
            peer_key,
            instance=instance,
            limits=limits,
            timeout=handshake_timeout,
            last_timestamps=last_timestamps,
        )
        now = trio.current_time()
        self._local_is_low = local_public < peer_key
        self.conn = Connection(local_is_low=self._local_is_low, now=now, config=self.config)
        self.peer_instance: bytes | None = None
        self.relay = relay
        self.links: list[direct.DirectLink] = []  # candidate direct links
        self.direct: direct.DirectLink | None = None  # confirmed, in use
        self._confirmed: set[int] = set()  # id() of links that authenticated
        self._probe: list[direct.DirectLink] = []  # links owed an empty record
        self._dialers: dict[tuple[str, int], trio.CancelScope] = {}
        self.error: TunnelError | None = None
        self.established = trio.Event()
        self.finished = trio.Event()
        self._wake = trio.Event()
        self._flushing = False  # a task is inside _flush
        self._release_tail = False  # next sender flush sends held-back tails
        self._timer_scope = trio.CancelScope()  # the timer task sleeps in it
        self._ack_due = math.inf  # a deferred ACK must leave by then
        self._last_rehandshake = -math.inf
        self._stream_events: dict[int, trio.Event] = {}
        self._pongs: dict[int, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self.path_changes = 0

    # == lifecycle =======================================================
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the session's tasks until it fails or is closed."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._sender)
                nursery.start_soon(self._timer)
                for endpoint, scope in self._dialers.items():
                    nursery.start_soon(self._dialer, *endpoint, scope)
                task_status.started()
        finally:
            if self.error is None:
                self.error = SessionClosedError(CloseReason.CLOSED, "session ended")
            self._notify_all()
            self.finished.set()
            with trio.CancelScope(shield=True):
                for link in self.links:
                    await trio.aclose_forcefully(link.stream)

    def fail(self, error: TunnelError) -> None:
        """End the session with ``error``; every stream sees it."""
        if self.error is None:
            self.error = error
        self._notify_all()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def fail_quietly(self) -> None:
        """End the session without telling the peer (it will time out)."""
        self.fail(SessionClosedError(CloseReason.CLOSED, "session closed locally"))

    async def aclose(self) -> None:
        """Tell the peer (best effort) and end the session."""
        if self.error is None and self.channel.can_seal(trio.current_time()):
            self.conn.close(ErrorCode.CLOSED, "session closed")
            with trio.move_on_after(0.5):
                await self._flush()
        self.fail(SessionClosedError(CloseReason.CLOSED, "session closed locally"))

    def start_handshake(self) -> None:
        self.channel.start_handshake(trio.current_time())
        self.wake()

    # == streams =========================================================
    async def open_stream(self, service: str) -> TunnelStream:
        """Open a stream to ``service`` on the peer.

        Raises:
            StreamRefusedError: the peer said no.
            PeerTimeoutError, SessionClosedError: the session ended first.
        """
        self._check()
        if self.channel.current is None and not self.channel.handshake_pending():
            self.start_handshake()
        conn = self.conn
        sid = conn.open_stream(service)
        st = conn.streams[sid]
        self.wake()
        try:
            while st.phase is StreamPhase.OPENING:
                await self.wait_stream(sid)
                self._check()
                if conn is not self.conn:
                    raise SessionClosedError(
                        CloseReason.PEER_RESTARTED, "peer restarted while opening"
                    )
        except BaseException:
            # Cancelled (or failed) while opening: abandon the stream so the
            # peer's side does not wait forever.
            if st.phase is StreamPhase.OPENING and conn is self.conn:
                conn.reset(sid, ErrorCode.CLOSED, ResetReason.OPEN_ABANDONED)
                conn.close_read(sid)
                self.wake()
            raise
        if st.phase is StreamPhase.REFUSED:
            assert st.error is not None
            raise StreamRefusedError(*st.error)
        return TunnelStream(self, st)

    def accept_stream(self, sid: int) -> TunnelStream:
        """Accept a stream the peer asked for (from an ``on_request`` callback)."""
        st = self.conn.streams[sid]
        self.conn.accept(sid)
        self.wake()
        return TunnelStream(self, st)

    async def wait_stream(self, sid: int) -> None:
        """Wait until stream ``sid`` changed (or the session ended)."""
        ev = self._stream_events.get(sid)
        if ev is None:
            ev = self._stream_events[sid] = trio.Event()
        await ev.wait()

    def notify_stream(self, sid: int) -> bool:
        """Wake the task waiting on stream ``sid``; True if there was one."""
        ev = self._stream_events.pop(sid, None)
        if ev is not None:
            ev.set()
            return True
        return False

    def _notify_all(self) -> None:
        for ev in self._stream_events.values():
            ev.set()
        self._stream_events.clear()
        for ev in self._pongs.values():
            ev.set()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    async def ping(self, timeout: float = 5.0) -> float:
        """Round-trip time of one PING/PONG, in seconds.

        Raises:
            PeerTimeoutError: no answer within ``timeout`` (pings are re-sent each second).
        """
        self._check()
        if self.channel.current is None and not self.channel.handshake_pending():
            self.start_handshake()
        token = int.from_bytes(os.urandom(8), "big") | 1
        ev = self._pongs[token] = trio.Event()
        start = trio.current_time()
        try:
            with trio.move_on_after(timeout):
                while not ev.is_set():
                    sent = trio.current_time()
                    self.conn.ping(token)
                    self.wake()
                    with trio.move_on_after(1.0):
                        await ev.wait()
                    if ev.is_set():
                        self._check()
                        return trio.current_time() - sent
            self._check()
            raise PeerTimeoutError(f"no pong in {trio.current_time() - start:.1f}s")
        finally:
            self._pongs.pop(token, None)

    # == paths ===========================================================
    def current_path(self) -> PacketPath | None:
        if self.direct is not None and not self.direct.failed:
            return self.direct
        if self.relay is not None:
            return self.relay
        for link in self.links:
            if not link.failed:
                return link
        return None

    def path_kind(self) -> str:
        path = self.current_path()
        return "none" if path is None else path.kind

    def set_relay(self, relay: PacketPath | None) -> None:
        if relay is not self.relay:
            self.relay = relay
            self._path_changed()

    def path_reset(self) -> None:
        """The relay connection was re-established: resend what was in flight."""
        if self.current_path() is self.relay:
            self._path_changed()

    def _path_changed(self) -> None:
        self.path_changes += 1
        self.conn.path_changed(trio.current_time())
        self.wake()

    def add_link(self, link: direct.DirectLink, *, probe: bool) -> None:
        """A new direct link to the peer (accepted or dialed)."""
        self.links.append(link)
        if probe:
            self._probe.append(link)
            self.wake()

    def link_lost(self, link: direct.DirectLink) -> None:
        link.failed = True
        if link in self.links:
            self.links.remove(link)
        self._confirmed.discard(id(link))
        if link is self.direct:
            self.direct = None
            for other in self.links:
                if id(other) in self._confirmed and not other.failed:
                    self.direct = other
                    break
            self._path_changed()

    def _confirm(self, link: direct.DirectLink) -> None:
        if id(link) in self._confirmed or link.failed:
            return
        self._confirmed.add(id(link))
        link.confirmed = True
        self._probe.append(link)  # so the other side confirms it too
        if self.direct is not link:
            self.direct = link
            self._path_changed()

    # == receiving =======================================================
    def datagram_received(self, data: bytes, via: PacketPath) -> None:
        """One datagram from the peer, on any path. Never raises, never blocks."""
        if self.error is not None:
            return
        try:
            self._datagram(data, via)
        except Exception as exc:  # a bug here must end one session, not the process
            log.exception("tunnel session with %s failed on input", self.peer_key.hex()[:8])
            self.fail(SessionClosedError(CloseReason.INTERNAL_ERROR, repr(exc)))

    def _datagram(self, data: bytes, via: PacketPath) -> None:
        now = trio.current_time()
        res = self.channel.receive(data, now)
        if res.established:
            self._on_established(res.peer_instance)
        if res.plaintext is not None:
            if isinstance(via, direct.DirectLink):
                self._confirm(via)
            self.conn.receive(res.plaintext, now)
            self._after_input()
            if (
                self.conn.ack_only()
                and self.conn.unacked_received < 2
                and not self.channel.has_outgoing()
            ):
                # Delayed ACK (as QUIC: at once for every second packet):
                # a woken reader's answer or read carries it; the timer
                # sends it if nobody does within ACK_DELAY.
                self._ack_due = min(self._ack_due, now + ACK_DELAY)
                self._reschedule_timer()
                return
        self.wake()

    def _on_established(self, instance: bytes) -> None:
        if self.peer_instance is not None and instance != self.peer_instance:
            # The peer restarted: its half of every stream is gone.
            old = self.conn
            self.conn = Connection(
                local_is_low=self._local_is_low, now=trio.current_time(), config=self.config
            )
            old.dead = True
            self._notify_all()
        self.peer_instance = instance
        self.established.set()

    def _after_input(self) -> bool:
        """Handle the connection's events; True if a waiting stream task was woken."""
        conn = self.conn
        woke = False
        for ev in conn.take_events():
            if isinstance(ev, StreamRequest):
                verdict = self._on_request(self, ev.sid, ev.service)
                if verdict is not True:
                    reason = verdict if isinstance(verdict, str) else "refused"
                    conn.refuse(ev.sid, ErrorCode.REFUSED, reason)
            elif isinstance(ev, PongReceived):
                pong = self._pongs.get(ev.token)
                if pong is not None:
                    pong.set()
            elif isinstance(ev, PeerClosed):
                self.fail(SessionClosedError(CloseReason.PEER_CLOSED, ev.reason or "peer closed"))
        for sid in conn.take_changed():
            woke = self.notify_stream(sid) or woke
        return woke

    # == sending =========================================================
    def wake(self) -> None:
        self._wake.set()

    async def _sender(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self.conn.ack_only():
                # Let the tasks woken by the same datagrams run first: an
                # answer they write carries the ACK in the same packet.
                await trio.lowlevel.cancel_shielded_checkpoint()
                self._wake = trio.Event()
            hold = 0 if self._release_tail else HOLD_TAIL
            self._release_tail = False
            await self._flush(hold_tail=hold)

    async def flush_now(self) -> None:
        """Send what is ready from the calling task (saves a task switch per
        write); if a flush is already running, it picks the new data up."""
        if self._flushing or self.error is not None:
            self.wake()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        try:
            sent = await self._flush(hold_tail=HOLD_TAIL)
        except trio.Cancelled:
            self.wake()  # what was not sent is retransmitted; keep going
            raise
        if not sent:  # sending yielded already; otherwise yield once here
            await trio.lowlevel.cancel_shielded_checkpoint()

    def after_read(self) -> None:
        """A stream's reader took bytes: make sure window updates (and an ACK
        nobody else will carry) get sent."""
        conn = self.conn
        if conn.ack_only():
            if self._ack_due == math.inf or conn.unacked_received >= 2:
                self.wake()
        elif conn.has_output():
            self.wake()

    async def _flush(self, hold_tail: int = 0) -> bool:
        """Send everything ready; True if anything was sent (which yielded)."""
        if self._flushing:
            return False
        self._flushing = True
        try:
            return await self._flush_rounds(hold_tail)
        finally:
            self._flushing = False
            if self.conn.held_back:
                # the runt tail leaves with the next write, or on the timer
                self._ack_due = min(self._ack_due, trio.current_time() + HOLD_DELAY)
                self._reschedule_timer()

    async def _flush_rounds(self, hold_tail: int) -> bool:
        self._ack_due = math.inf  # whatever ACK is due leaves now
        sent = False
        channel, conn = self.channel, self.conn
        for _ in range(1000):  # bounded: each round sends at most 64 packets
            now = trio.current_time()
            if self.channel.current is not None:
                channel.tick(now)
            path = self.current_path()
            out = channel.take_outgoing()
            if channel.can_seal(now):
                while self._probe:
                    link = self._probe.pop()
                    record = channel.seal(b"", now)
                    if record is not None:
                        sent = True
                        await link.send(self.peer_key, record)
                        if link.failed:
                            self.link_lost(link)
                for packet in conn.poll(now, hold_tail=hold_tail):
                    record = channel.seal(packet, now)
                    if record is not None:
                        out.append(record)
            self._reschedule_timer()
            if not out or path is None:
                # (with no path the records are lost; retransmission recovers)
                return sent
            sent = True
            if isinstance(path, direct.DirectLink):
                await path.send_many(self.peer_key, out)
                if path.failed:
                    self.link_lost(path)
            else:
                for datagram in out:
                    await path.send(self.peer_key, datagram)
            for sid in conn.take_changed():
                self.notify_stream(sid)
        return sent

    # == timers ==========================================================
    def _reschedule_timer(self) -> None:
        # Moving the deadline of the scope the timer task sleeps in needs no
        # task switch.  Later as well as earlier: a delayed ACK or a
        # retransmission deadline that is no longer due (the answer carried
        # the ACK, the ACK came) must not wake the timer task for nothing.
        deadline = self._deadline()
        scope = self._timer_scope
        if deadline != scope.deadline:
            scope.deadline = deadline

    def _deadline(self) -> float:
        t = min(self.conn.next_deadline(), self._ack_due)
        hs = self.channel.next_deadline()
        if hs is not None:
            t = min(t, hs)
        rekey = self.channel.rekey_deadline()
        if rekey is not None:
            t = min(t, rekey)
        return t

    async def _timer(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._deadline()) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            now = trio.current_time()
            if now >= self._ack_due:
                self._ack_due = math.inf
                self._release_tail = True
                self.wake()
            if now < self._deadline():
                continue  # woke for the ACK only, or the deadline moved later
            self.channel.tick(now)
            if self.channel.current is None and self.channel.handshake_failed(now):
                self.fail(PeerTimeoutError("handshake with peer timed out"))
                return
            self.conn.on_timer(now)
            if (
                self.conn.in_flight()
                and now >= self.conn.last_recv + REHANDSHAKE_AFTER
                and now >= self._last_rehandshake + REHANDSHAKE_AFTER
                and not self.channel.handshake_pending()
            ):
                self._last_rehandshake = now
                self.channel.start_handshake(now)
            if self.conn.dead:
                self.fail(
                    PeerTimeoutError(
                        f"peer silent for {self.config.dead_timeout:.0f}s (dead-peer timeout)"
                    )
                )
                return
            for sid in self.conn.take_changed():
                self.notify_stream(sid)
            self.wake()

    # == direct dialing ==================================================
    def set_direct_endpoints(self, endpoints: list[tuple[str, int]]) -> None:
        """Dial these endpoints in the background (and stop dialing others)."""
        for endpoint in endpoints:
            if endpoint not in self._dialers:
                scope = self._dialers[endpoint] = trio.CancelScope()
                if self._nursery is not None:
                    self._nursery.start_soon(self._dialer, *endpoint, scope)
        for endpoint in list(self._dialers):
            if endpoint not in endpoints:
                self._dialers.pop(endpoint).cancel()

    async def _dialer(self, host: str, port: int, scope: trio.CancelScope) -> None:
        with scope:
            await self._dial_loop(host, port)

    async def _dial_loop(self, host: str, port: int) -> None:
        delay = REDIAL_DELAY
        while True:
            link: direct.DirectLink | None = None
            with trio.move_on_after(DIAL_TIMEOUT):
                try:
                    link = await direct.dial(host, port, self.local_public, self.peer_key)
                except OSError:
                    link = None
            if link is not None:
                self.add_link(link, probe=True)
                try:
                    while True:
                        event = await link.receive()
                        if isinstance(event, Datagram):
                            self.datagram_received(event.data, link)
                except (trio.EndOfChannel, direct.DirectLinkError):
                    pass
                finally:
                    if link.confirmed:
                        delay = REDIAL_DELAY  # it worked: retry soon after a break
                    self.link_lost(link)
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(link.stream)
            # Keep probing, but back off while the endpoint does not answer.
            await trio.sleep(delay)
            delay = min(delay * 2, MAX_REDIAL_DELAY)
