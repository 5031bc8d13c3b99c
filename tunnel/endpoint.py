"""``Endpoint``: a node's tunnel side — one per node key.

It owns the paths (relay paths, a direct TCP listener), reads them, and
dispatches each datagram by its source key to that peer's ``Session``,
creating a session when an authorised peer sends a handshake initiation.
Applications open streams with ``open_stream`` and take streams the peers
open with ``accept`` or ``serve``.

Typical use::

    async with trio.open_nursery() as nursery:
        ep = Endpoint(private_key, relay=DerpPath(client))
        await nursery.start(ep.run)
        ep.set_peer(agent_key, direct_endpoints=[("10.0.0.5", 4242)])
        stream = await ep.open_stream(agent_key, "ssh")
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from tunnel import direct
from tunnel.connection import Config
from tunnel.errors import DropReason, ResetReason
from tunnel.handshake import MSG_INITIATION, public_key
from tunnel.path import Datagram, PacketPath, PathEvent, PathReset
from tunnel.record import Limits
from tunnel.session import Session
from tunnel.stream import TunnelStream

Authorize = Callable[[bytes], bool]
Allow = Callable[[bytes, str], "bool | str"]
Handler = Callable[[bytes, str, TunnelStream], Awaitable[None]]

HELLO_TIMEOUT = 5.0


@dataclass
class _Peer:
    relay_url: str | None = None
    direct_endpoints: list[tuple[str, int]] = field(default_factory=list)


class Endpoint:
    """The tunnel endpoint of one node key.

    Args:
        private_key: this node's 32-byte X25519 private key (its DERP key).
        relay: the default relay path (e.g. ``DerpPath``), or None.
        authorize: extra check for peers that were not ``set_peer``'d; peers
            neither set nor authorised cannot start sessions with us.
        allow: decides each incoming stream: True, or a refusal reason.
            Default: allow every service from an authorised peer.
        config: stream/flow-control/timer tunables.
        limits: rekey limits.
        handshake_timeout: seconds before an unanswered handshake fails.
        accept_backlog: incoming streams waiting for ``accept``; more are refused.
    """

    def __init__(
        self,
        private_key: bytes,
        *,
        relay: PacketPath | None = None,
        authorize: Authorize | None = None,
        allow: Allow | None = None,
        config: Config | None = None,
        limits: Limits | None = None,
        handshake_timeout: float = 15.0,
        accept_backlog: int = 64,
    ) -> None:
        self.private_key = private_key
        self.public_key = public_key(private_key)
        self.instance = os.urandom(8)
        self.config = config or Config()
        self.limits = limits
        self.handshake_timeout = handshake_timeout
        self._authorize = authorize
        self._allow = allow
        self._relays: dict[str | None, PacketPath] = {}
        self._peers: dict[bytes, _Peer] = {}
        self._sessions: dict[bytes, Session] = {}
        self._last_timestamps: dict[bytes, bytes] = {}
        self._accept_send, self._accept_recv = trio.open_memory_channel[
            tuple[bytes, str, TunnelStream]
        ](accept_backlog)
        self._nursery: trio.Nursery | None = None
        self._started = trio.Event()
        self.dropped: Counter[DropReason] = Counter()
        if relay is not None:
            self._relays[None] = relay

    # == lifecycle =======================================================
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the endpoint (path readers, sessions) until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for path in self._relays.values():
                    nursery.start_soon(self._read_path, path)
                self._started.set()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for session in list(self._sessions.values()):
                session.fail_quietly()

    async def aclose(self) -> None:
        """Close every session (telling peers) and stop."""
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            for session in list(self._sessions.values()):
                await session.aclose()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _spawn(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("Endpoint.run() is not running")
        return self._nursery

    # == configuration ===================================================
    def add_relay(self, path: PacketPath, url: str | None = None) -> None:
        """Add a relay path (``url`` None = the default relay)."""
        self._relays[url] = path
        if self._nursery is not None:
            self._nursery.start_soon(self._read_path, path)
        for key, session in self._sessions.items():
            peer = self._peers.get(key, _Peer())
            if peer.relay_url == url or (url is None and peer.relay_url not in self._relays):
                session.set_relay(path)

    def set_peer(
        self,
        peer_key: bytes,
        *,
        relay_url: str | None = None,
        direct_endpoints: list[tuple[str, int]] | None = None,
    ) -> None:
        """Authorise ``peer_key`` and tell how to reach it (from the coordinator).

        Args:
            peer_key: the peer's 32-byte node key.
            relay_url: the peer's home relay, if a path to it was added with
                ``add_relay``; otherwise the default relay is used.
            direct_endpoints: (host, port) TCP endpoints the peer listens on;
                tried in the background while traffic uses the relay.
        """
        peer = _Peer(relay_url, list(direct_endpoints or []))
        self._peers[peer_key] = peer
        session = self._sessions.get(peer_key)
        if session is not None:
            session.set_relay(self._relay_for(peer))
            session.set_direct_endpoints(peer.direct_endpoints)

    def remove_peer(self, peer_key: bytes) -> None:
        """Forget a peer and end its session."""
        self._peers.pop(peer_key, None)
        session = self._sessions.get(peer_key)
        if session is not None:
            session.fail_quietly()

    def _relay_for(self, peer: _Peer) -> PacketPath | None:
        return self._relays.get(peer.relay_url) or self._relays.get(None)

    def _authorized(self, key: bytes) -> bool:
        if key in self._peers:
            return True
        return self._authorize is not None and bool(self._authorize(key))

    # == sessions ========================================================
    def session(self, peer_key: bytes) -> Session | None:
        """The live session to ``peer_key``, if any."""
        return self._sessions.get(peer_key)

    def _session_for(self, peer_key: bytes) -> Session:
        session = self._sessions.get(peer_key)
        if session is not None and session.error is None:
            return session
        peer = self._peers.get(peer_key, _Peer())
        session = Session(
            local_private=self.private_key,
            local_public=self.public_key,
            peer_key=peer_key,
            instance=self.instance,
            relay=self._relay_for(peer),
            on_request=self._on_request,
            config=self.config,
            limits=self.limits,
            last_timestamps=self._last_timestamps,
            handshake_timeout=self.handshake_timeout,
        )
        session.set_direct_endpoints(peer.direct_endpoints)
        self._sessions[peer_key] = session
        self._spawn().start_soon(self._run_session, session)
        return session

    async def _run_session(self, session: Session) -> None:
        try:
            await session.run()
        finally:
            if self._sessions.get(session.peer_key) is session:
                del self._sessions[session.peer_key]

    def _on_request(self, session: Session, sid: int, service: str) -> bool | str:
        if self._allow is not None:
            verdict = self._allow(session.peer_key, service)
            if verdict is not True:
                return verdict if isinstance(verdict, str) else "not allowed"
        stream = session.accept_stream(sid)
        try:
            self._accept_send.send_nowait((session.peer_key, service, stream))
        except trio.WouldBlock:
            stream.reset(1, ResetReason.BACKLOG_FULL)
        return True

    # == application API =================================================
    async def open_stream(self, peer_key: bytes, service: str) -> TunnelStream:
        """Open a stream to ``service`` (``ssh``, ``tcp:<port>``, ``tcp:<host>:<port>``).

        Raises:
            StreamRefusedError: the peer refused (its reason is attached).
            PeerTimeoutError: the handshake or the peer timed out.
            SessionClosedError: the session ended while opening.
            ValueError: ``peer_key`` is not 32 bytes or is our own key.
        """
        if len(peer_key) != 32 or peer_key == self.public_key:
            raise ValueError("peer_key must be another node's 32-byte key")
        await self._started.wait()
        if peer_key not in self._peers:
            self._peers[peer_key] = _Peer()
        return await self._session_for(peer_key).open_stream(service)

    async def accept(self) -> tuple[bytes, str, TunnelStream]:
        """Wait for a stream a peer opened (and ``allow`` allowed).

        Returns:
            (peer_key, service, stream).
        """
        return await self._accept_recv.receive()

    async def serve(self, handler: Handler) -> None:
        """Run ``handler(peer_key, service, stream)`` in a new task per stream, forever."""
        async with trio.open_nursery() as nursery:
            while True:
                peer, service, stream = await self.accept()
                nursery.start_soon(handler, peer, service, stream)

    async def ping(self, peer_key: bytes, timeout: float = 5.0) -> float:
        """Tunnel round-trip time to ``peer_key`` in seconds.

        Raises:
            PeerTimeoutError: no answer within ``timeout``.
        """
        await self._started.wait()
        if peer_key not in self._peers:
            self._peers[peer_key] = _Peer()
        return await self._session_for(peer_key).ping(timeout)

    def path_of(self, peer_key: bytes) -> str:
        """"direct", "relay", or "none" (no session or no usable path)."""
        session = self._sessions.get(peer_key)
        return "none" if session is None else session.path_kind()

    def stats(self) -> dict[str, object]:
        """Counters for metrics: drops by reason, per-session connection stats."""
        return {
            "dropped": dict(self.dropped),
            "sessions": {
                key.hex(): {
                    "path": s.path_kind(),
                    "path_changes": s.path_changes,
                    "rtt": s.conn.rtt(),
                    "channel_dropped": dict(s.channel.dropped),
                    **s.conn.stats,
                }
                for key, s in self._sessions.items()
            },
        }

    # == paths ===========================================================
    async def _read_path(self, path: PacketPath) -> None:
        # A path that can call us back with each datagram (the relay) does so
        # from its own reader task: one task switch less per datagram.
        attach = getattr(path, "set_datagram_handler", None)
        if attach is not None:
            attach(functools.partial(self._on_datagram, path))
        try:
            while True:
                try:
                    event = await path.receive()
                except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                self._dispatch(path, event)
        finally:
            if attach is not None:
                attach(None)

    def _dispatch(self, path: PacketPath, event: PathEvent) -> None:
        if isinstance(event, PathReset):
            for key, live in list(self._sessions.items()):
                if event.peer is None or event.peer == key:
                    live.path_reset()
            return
        self._on_datagram(path, event.src, event.data)

    def _on_datagram(self, path: PacketPath, src: bytes, data: bytes) -> None:
        session: Session | None = self._sessions.get(src)
        if session is None or session.error is not None:
            if not data or data[0] != MSG_INITIATION:
                self.dropped[DropReason.NO_SESSION] += 1
                return
            if not self._authorized(src):
                self.dropped[DropReason.UNAUTHORIZED_PEER] += 1
                return
            session = self._session_for(src)
        session.datagram_received(data, path)

    async def listen_direct(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Accept direct-path TCP connections from authorised peers.

        Returns:
            The bound (host, port). With a wildcard host ("0.0.0.0") advertise
            the machine's reachable addresses with this port instead.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: ``run`` is not running.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        listener = listeners[0]
        for extra in listeners[1:]:
            await extra.aclose()
        sock = listener.socket
        bound = sock.getsockname()
        self._spawn().start_soon(self._serve_direct, listener)
        return str(bound[0]), int(bound[1])

    async def _serve_direct(self, listener: trio.SocketListener) -> None:
        async with listener, trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                nursery.start_soon(self._direct_conn, stream)

    async def _direct_conn(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(HELLO_TIMEOUT) as scope:
                link = await direct.read_hello(stream)
            if scope.cancelled_caught:
                self.dropped[DropReason.DIRECT_HELLO_TIMEOUT] += 1
                return
            if not self._authorized(link.peer):
                self.dropped[DropReason.DIRECT_UNAUTHORIZED] += 1
                return
            session = self._session_for(link.peer)
            session.add_link(link, probe=False)
            try:
                while session.error is None:
                    event = await link.receive()
                    if isinstance(event, Datagram):
                        session.datagram_received(event.data, link)
            finally:
                session.link_lost(link)
        except (trio.EndOfChannel, trio.BrokenResourceError, OSError):
            pass
        except direct.DirectLinkError:
            self.dropped[DropReason.DIRECT_FRAMING] += 1
        finally:
            await trio.aclose_forcefully(stream)
