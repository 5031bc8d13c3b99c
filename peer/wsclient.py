"""A small WebSocket client for the coordinator's messages, on wsproto.

The agent and the CLI both reach coderd's coordinator with it.

Why not trio-websocket.  ``burrow ssh --stdio`` runs once per OpenSSH
connection, so its start-up time is connect time; importing trio-websocket
costs about 10 ms on top of wsproto (``importlib.metadata`` and a version
lookup), while wsproto is loaded anyway (``derp.upgrade``).  The coordinator
needs little: one request, then small JSON messages both ways.

Theory of operation.  :func:`connect` opens TCP (TLS for ``wss://``), sends
the upgrade request and feeds the response to a ``wsproto.WSConnection``
until it accepts (a :class:`ConnectionRejected` carries the status and body
otherwise).  There is no background task: :meth:`WebSocket.get_message`
reads the transport and feeds wsproto until a whole message is there,
answering pings on the way.  Events not yet used wait in ``_events`` and a
partial message in ``_parts``, and a cancelled ``receive_some`` receives
nothing, so a cancelled ``get_message`` loses no data.  Writes (messages,
pongs, the close) are whole: each is shielded from cancellation and
serialised by a lock, so a cancelled caller never cuts a frame.
:meth:`WebSocket.ping` sends a Ping and waits for its Pong, which the task
in ``get_message`` hands over (a ping needs a concurrent reader).  A Close
from the server, transport EOF or a transport error ends the connection:
every later call raises :class:`ConnectionClosed`.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import urllib.parse
from collections import deque

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

READ_SIZE = 65536
MAX_REJECT_BODY = 64 << 10


class HandshakeError(Exception):
    """The WebSocket upgrade failed (bad response, connection lost)."""


class ConnectionRejected(HandshakeError):
    """The server answered the upgrade with an HTTP error.

    Attributes:
        status_code: the HTTP status.
        body: the response body (up to 64 KiB).
    """

    def __init__(self, status_code: int, body: bytes) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.body = body


class ConnectionClosed(Exception):
    """The WebSocket is closed.

    Attributes:
        reason: the peer's close reason, or a description; None if none given.
    """

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason or "closed")
        self.reason = reason


class WebSocket:
    """An open client WebSocket (made by :func:`connect`)."""

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection, *,
                 max_message_size: int) -> None:
        self._stream = stream
        self._ws = ws
        self._max = max_message_size
        self._events: deque[Event] = deque()
        self._parts: list[str | bytes | bytearray] = []
        self._size = 0
        self._send_lock = trio.Lock()
        self._closed: str | None = None  # why, once closed
        self._close_reason: str | None = None
        self._pongs: dict[bytes, trio.Event] = {}  # ping payload -> woken by the reader

    async def get_message(self) -> str | bytes:
        """The next whole message (text as str, binary as bytes).

        Raises:
            ConnectionClosed: the connection is closed (by either side, or lost),
                or a message exceeded the size limit.
        """
        while True:
            while self._events:
                event = self._events.popleft()
                if isinstance(event, TextMessage | BytesMessage):
                    self._size += len(event.data)
                    if self._size > self._max:
                        await self._fail(1009, "message too big")
                    self._parts.append(event.data)
                    if event.message_finished:
                        parts, self._parts, self._size = self._parts, [], 0
                        if isinstance(event, TextMessage):
                            return "".join(p for p in parts if isinstance(p, str))
                        return b"".join(p for p in parts if not isinstance(p, str))
                elif isinstance(event, Ping):
                    # A Close may already be parsed behind this Ping (a peer that
                    # was frozen finds pings and the close queued together):
                    # then the Pong is moot, and wsproto refuses to send it.
                    if self._ws.state is ConnectionState.OPEN:
                        await self._send(self._ws.send(event.response()))
                elif isinstance(event, Pong):
                    waiter = self._pongs.get(bytes(event.payload))
                    if waiter is not None:
                        waiter.set()
                elif isinstance(event, CloseConnection):
                    self._close_reason = event.reason
                    if self._ws.state is ConnectionState.REMOTE_CLOSING:
                        await self._send(self._ws.send(event.response()))
                    await self._finish(event.reason or f"code {event.code}")
                    raise ConnectionClosed(event.reason)
            self._check_open()
            try:
                data = await self._stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                await self._finish(f"connection lost: {exc}")
                raise ConnectionClosed(self._closed) from None
            try:
                self._ws.receive_data(bytes(data) if data else None)
                self._events.extend(self._ws.events())
            except RemoteProtocolError as exc:
                await self._fail(1002, f"protocol error: {exc}")
            if not data and not self._events:
                await self._finish("connection lost")
                raise ConnectionClosed(self._closed)

    async def send_message(self, message: str | bytes) -> None:
        """Send one text (str) or binary (bytes) message.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        self._check_open()
        event = TextMessage(message) if isinstance(message, str) else BytesMessage(message)
        try:
            wire = self._ws.send(event)
        except LocalProtocolError as exc:  # wsproto refuses in a closing state
            raise ConnectionClosed(str(exc)) from None
        await self._send(wire)

    async def ping(self) -> None:
        """Send a Ping; return when its Pong arrives (read by a concurrent
        :meth:`get_message`).  Bound it with a timeout to detect a dead peer.

        Raises:
            ConnectionClosed: the connection is (or became) closed.
        """
        payload = os.urandom(8)
        waiter = self._pongs[payload] = trio.Event()
        try:
            self._check_open()
            try:
                wire = self._ws.send(Ping(payload=payload))
            except LocalProtocolError as exc:  # closing
                raise ConnectionClosed(str(exc)) from None
            await self._send(wire)
            await waiter.wait()
            self._check_open()
        finally:
            self._pongs.pop(payload, None)

    async def aclose(self) -> None:
        """Send a Close (if still open) and close the transport.  Idempotent."""
        if self._closed is None and self._ws.state is ConnectionState.OPEN:
            with contextlib.suppress(ConnectionClosed):
                await self._send(self._ws.send(CloseConnection(code=1000)), shield=False)
        await self._finish("closed")

    def _check_open(self) -> None:
        if self._closed is not None:
            raise ConnectionClosed(self._close_reason or self._closed)

    async def _send(self, wire: bytes, *, shield: bool = True) -> None:
        with trio.CancelScope(shield=shield):
            async with self._send_lock:
                self._check_open()
                try:
                    await self._stream.send_all(wire)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    await self._finish(f"connection lost: {exc}")
                    raise ConnectionClosed(self._closed) from None

    async def _fail(self, code: int, why: str) -> None:
        if self._ws.state is ConnectionState.OPEN:
            with contextlib.suppress(ConnectionClosed):
                await self._send(self._ws.send(CloseConnection(code=code, reason=why)))
        await self._finish(why)
        raise ConnectionClosed(why)

    async def _finish(self, why: str) -> None:
        if self._closed is None:
            self._closed = why
        for waiter in self._pongs.values():
            waiter.set()  # their ping() sees the close
        await trio.aclose_forcefully(self._stream)


async def connect(
    url: str,
    *,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    max_message_size: int = 1 << 20,
    ssl_context: ssl.SSLContext | None = None,
) -> WebSocket:
    """Open a WebSocket to ``url`` (``ws://`` or ``wss://``).

    Raises:
        ValueError: ``url`` is not a ws/wss URL.
        OSError: the TCP (or TLS) connection failed.
        ConnectionRejected: the server answered with an HTTP error.
        HandshakeError: any other failed upgrade.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a WebSocket URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    host = parts.hostname
    host_header = host if ":" not in host else f"[{host}]"
    if parts.port is not None:
        host_header += f":{parts.port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    stream: trio.abc.Stream
    if secure:
        try:
            stream = await trio.open_ssl_over_tcp_stream(
                host, port, ssl_context=ssl_context or ssl.create_default_context())
        except (ssl.SSLError, trio.BrokenResourceError) as exc:
            raise HandshakeError(f"TLS: {exc}") from None
    else:
        stream = await trio.open_tcp_stream(host, port)
    try:
        return await _upgrade(stream, host_header, target, extra_headers or [],
                              max_message_size)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def _upgrade(stream: trio.abc.Stream, host: str, target: str,
                   headers: list[tuple[bytes, bytes]], max_message_size: int) -> WebSocket:
    ws = WSConnection(ConnectionType.CLIENT)
    try:
        await stream.send_all(ws.send(Request(host=host, target=target,
                                              extra_headers=headers)))
    except (trio.BrokenResourceError, OSError) as exc:
        raise HandshakeError(f"connection lost: {exc}") from None
    rejected: RejectConnection | None = None
    body = bytearray()
    while True:
        try:
            data = await stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, OSError) as exc:
            raise HandshakeError(f"connection lost: {exc}") from None
        try:
            ws.receive_data(bytes(data) if data else None)
            events = list(ws.events())
        except RemoteProtocolError as exc:  # not an HTTP upgrade response
            raise HandshakeError(f"bad upgrade response: {exc}") from None
        for i, event in enumerate(events):
            if isinstance(event, AcceptConnection):
                sock = WebSocket(stream, ws, max_message_size=max_message_size)
                sock._events.extend(events[i + 1:])
                return sock
            if isinstance(event, RejectConnection):
                rejected = event
                if not event.has_body:
                    raise ConnectionRejected(event.status_code, b"")
            elif isinstance(event, RejectData) and rejected is not None:
                body += event.data[:MAX_REJECT_BODY - len(body)]
                if event.body_finished:
                    raise ConnectionRejected(rejected.status_code, bytes(body))
        if not data:
            if rejected is not None:
                raise ConnectionRejected(rejected.status_code, bytes(body))
            raise HandshakeError("connection closed during the upgrade")
