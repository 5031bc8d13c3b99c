"""burrow's HTTP/1.1 front door: one h11 keep-alive loop per connection.

Theory of operation.  ``serve_stream`` drives an ``h11.Connection`` over any
``trio.abc.Stream``.  For each request it reads the head, routes the path to
the mounted handler with the longest matching prefix, reads the body (bounded
by that mount's ``max_body``), calls the handler and writes its ``Response``;
then it starts the next cycle, or closes when either side asked to.

Upgrades.  Every handler gets an ``Upgrade`` object.  ``accept_raw`` sends a
101 through h11 (h11 tracks the switch proposal) and returns the raw stream,
replaying the bytes h11 had read past the request.  ``accept_websocket``
replays the bytes of the current request into trio-websocket
(``wrap_server_stream``): we keep a bounded copy of every byte fed to h11
since the current cycle began.  ``accept_websocket_stream`` answers the
WebSocket handshake itself and returns the raw stream, for handlers that run
their own framing (``derp.websocket``, which is several times faster).

trio-websocket needs a nursery for its reader task; one is opened only around
the handler of a request that asks for a WebSocket.  Once a connection
upgrades, its h11 parser is dropped: an idle DERP connection then costs the
front door only the suspended handler call.

Errors.  Malformed HTTP gets 400 (or h11's hint, e.g. 431) and the connection
closes; an unknown path 404; a body over the limit 413 (then close: the rest
of the body is never read); a body slower than ``body_timeout`` 408; a
handler exception 500 with a generic message -- the traceback goes to the log
only.  Errors are JSON (``Response.error``).  ``Expect: 100-continue`` is
answered before the body is read.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

import h11
import trio
import trio_websocket
from wsproto.utilities import generate_accept_token

from web.http import Handler, Request, Response
from web.prefixed import PrefixedStream

log = logging.getLogger("burrow.web.http")

RECEIVE_SIZE = 65536
MAX_HEAD = 64 * 1024  # h11's limit on a request head; also bounds the replay copy


class _TakenOver(Exception):
    """Internal: the connection left HTTP (an upgrade was accepted)."""


@dataclass(frozen=True)
class _Mount:
    prefix: str
    handler: Handler
    max_body: int


def _matches(prefix: str, path: str) -> bool:
    if prefix in ("", "/"):
        return True
    base = prefix.rstrip("/")
    return path == base or path.startswith(base + "/")


class _Upgrade:
    """The ``Upgrade`` handed to a handler for one request."""

    def __init__(self, door: _Connection, request: Request) -> None:
        self._door = door
        self._request = request
        self.is_websocket = "websocket" in request.header("upgrade").lower()
        self.taken = False
        self.websocket: trio_websocket.WebSocketConnection | None = None

    def _take(self) -> None:
        if self.taken:
            raise RuntimeError("connection already taken over")
        self.taken = True

    async def accept_raw(
        self, headers: Sequence[tuple[str, str]], protocol: str
    ) -> trio.abc.Stream:
        self._take()
        conn = self._door.h11
        out = [("Upgrade", protocol), ("Connection", "Upgrade"), *headers]
        data = conn.send(h11.InformationalResponse(status_code=101, headers=out))
        assert data is not None
        await self._door.stream.send_all(data)
        leftover, _ = conn.trailing_data
        self._door.detach()
        if not leftover:
            return self._door.stream  # no wrapper: one less call per read and write
        return PrefixedStream(leftover, self._door.stream)

    async def accept_websocket_stream(self, subprotocol: str | None = None) -> trio.abc.Stream:
        if not self.is_websocket:
            raise RuntimeError("not a WebSocket upgrade request")
        key = self._request.header("sec-websocket-key")
        headers = [("Sec-WebSocket-Accept", generate_accept_token(key.encode()).decode())]
        if subprotocol is not None:
            headers.append(("Sec-WebSocket-Protocol", subprotocol))
        return await self.accept_raw(headers, "websocket")

    async def accept_websocket(
        self, subprotocol: str | None = None
    ) -> trio_websocket.WebSocketConnection:
        if not self.is_websocket:
            raise RuntimeError("not a WebSocket upgrade request")
        if self._door.replay is None:
            raise RuntimeError("request too large to hand to the WebSocket server")
        self._take()
        replay = PrefixedStream(bytes(self._door.replay), self._door.stream)
        nursery = self._door.nursery
        assert nursery is not None  # opened for every WebSocket request
        ws_request = await trio_websocket.wrap_server_stream(
            nursery, replay, receive_buffer_size=RECEIVE_SIZE
        )
        ws: trio_websocket.WebSocketConnection = await ws_request.accept(
            subprotocol=subprotocol
        )
        self.websocket = ws
        return ws


class _Connection:
    """The state of one HTTP connection (owned by its ``serve_stream`` task)."""

    def __init__(self, stream: trio.abc.Stream, remote: str, scheme: str) -> None:
        self.stream = stream
        self.remote = remote
        self.scheme = scheme
        # Hosts trio-websocket's reader task; opened only around the handler
        # of a WebSocket request, so an idle DERP connection does not pay for it.
        self.nursery: trio.Nursery | None = None
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        # Every byte fed to h11 since this cycle began, for WebSocket replay;
        # None once it outgrew MAX_HEAD (such a request cannot be replayed).
        self.replay: bytearray | None = bytearray()

    def detach(self) -> None:
        """The connection left HTTP: drop the parser (~1 KiB per idle DERP client)."""
        del self.h11
        self.replay = None

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
            if self.replay is not None:
                self.replay += data
                if len(self.replay) > MAX_HEAD:
                    self.replay = None
            self.h11.receive_data(data)

    async def send(self, response: Response, *, head: bool, close: bool = False) -> None:
        headers = [(k, v) for k, v in response.headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(response.body))))
        if close:
            headers.append(("Connection", "close"))
        out = self.h11.send(h11.Response(status_code=response.status, headers=headers))
        assert out is not None
        chunks = [out]
        if response.body and not head:
            data = self.h11.send(h11.Data(data=response.body))
            assert data is not None
            chunks.append(data)
        end = self.h11.send(h11.EndOfMessage())
        assert end is not None
        chunks.append(end)
        await self.stream.send_all(b"".join(chunks))

    async def send_error(self, status: int, message: str) -> None:
        """Best-effort error reply before closing; ignored when h11 cannot send one."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(
            h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            await self.send(Response.error(status, message), head=False, close=True)


class FrontDoor:
    """Routes HTTP/1.1 requests on a stream to handlers mounted by path prefix.

    Args:
        idle_timeout: seconds a keep-alive connection may sit between requests
            (and a request head may take to arrive) before it is closed.
        body_timeout: seconds a request body may take to arrive (then 408).
    """

    def __init__(self, *, idle_timeout: float = 120.0, body_timeout: float = 60.0) -> None:
        self._mounts: list[_Mount] = []
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        self.requests = 0
        self.errors: dict[int, int] = {}

    def mount(self, prefix: str, handler: Handler, *, max_body: int = 1 << 20) -> None:
        """Serve every path under ``prefix`` with ``handler`` (longest prefix wins).

        Raises:
            ValueError: ``prefix`` does not start with ``/`` or is already mounted.
        """
        if not prefix.startswith("/"):
            raise ValueError(f"mount prefix must start with '/': {prefix!r}")
        if any(m.prefix == prefix for m in self._mounts):
            raise ValueError(f"prefix already mounted: {prefix!r}")
        self._mounts.append(_Mount(prefix, handler, max_body))
        self._mounts.sort(key=lambda m: len(m.prefix.rstrip("/")), reverse=True)

    def route(self, path: str) -> _Mount | None:
        for m in self._mounts:
            if _matches(m.prefix, path):
                return m
        return None

    def _count(self, status: int) -> None:
        if status >= 400:
            self.errors[status] = self.errors.get(status, 0) + 1

    async def serve_stream(self, stream: trio.abc.Stream, *, remote: str, scheme: str) -> None:
        """Serve HTTP on ``stream`` until either side closes it; closes ``stream``.

        Never raises for anything the peer does (I/O errors end the connection).
        """
        try:
            await self._loop(_Connection(stream, remote, scheme))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except h11.LocalProtocolError as exc:
            log.error("HTTP response error for %s: %s", remote, exc)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _loop(self, conn: _Connection) -> None:
        while True:
            try:
                with trio.move_on_after(self.idle_timeout) as idle:
                    event = await conn.next_event()
                if idle.cancelled_caught:
                    return
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                if not isinstance(event, h11.Request):
                    await conn.send_error(400, "bad request")
                    return
                keep = await self._one(conn, event)
            except h11.RemoteProtocolError as exc:
                log.info("bad HTTP from %s: %s", conn.remote, exc)
                self._count(exc.error_status_hint)
                await conn.send_error(exc.error_status_hint, "malformed HTTP request")
                return
            if not keep or conn.h11.our_state is h11.MUST_CLOSE:
                return
            try:
                conn.h11.start_next_cycle()
            except h11.LocalProtocolError:
                return
            conn.replay = bytearray(conn.h11.trailing_data[0])

    async def _one(self, conn: _Connection, head: h11.Request) -> bool:
        """One request/response cycle; False when the connection must close."""
        self.requests += 1
        raw_target = head.target.decode("latin-1")
        parts = urllib.parse.urlsplit(raw_target)
        path = urllib.parse.unquote(parts.path) or "/"
        method = head.method.decode("ascii", "replace")
        headers: dict[str, str] = {}
        for name, value in head.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        is_head = method == "HEAD"
        mount = self.route(path)
        if mount is None:
            return await self._reply_then_drain(conn, Response.error(404, "not found"), is_head)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > mount.max_body:
            self._count(413)
            await conn.send(Response.error(413, "request body too large"), head=is_head, close=True)
            return False
        body = bytearray()
        if conn.h11.they_are_waiting_for_100_continue:
            # curl and friends otherwise wait a second before sending a body.
            data = conn.h11.send(h11.InformationalResponse(status_code=100, headers=[]))
            assert data is not None
            await conn.stream.send_all(data)
        with trio.move_on_after(self.body_timeout) as slow:
            while True:
                event = await conn.next_event()
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > mount.max_body:
                        self._count(413)
                        msg = Response.error(413, "request body too large")
                        await conn.send(msg, head=is_head, close=True)
                        return False
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return False
        if slow.cancelled_caught:
            self._count(408)
            await conn.send_error(408, "request body timed out")
            return False
        request = Request(
            method=method,
            path=path,
            query=urllib.parse.parse_qs(parts.query, keep_blank_values=True),
            headers=headers,
            body=bytes(body),
            remote=conn.remote,
            scheme=conn.scheme,
        )
        upgrade = _Upgrade(conn, request)
        try:
            response = await self._call(conn, mount.handler, request, upgrade)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception:
            if upgrade.taken:
                log.exception("handler for %s %s failed after upgrade", method, path)
                return False
            log.exception("handler for %s %s failed", method, path)
            response = Response.error(500, "internal server error")
        if upgrade.taken:
            return False
        if response is None:
            log.error("handler for %s %s returned no response", method, path)
            response = Response.error(500, "internal server error")
        self._count(response.status)
        await conn.send(response, head=is_head)
        return True

    async def _call(
        self, conn: _Connection, handler: Handler, request: Request, upgrade: _Upgrade
    ) -> Response | None:
        if not upgrade.is_websocket:
            return await handler(request, upgrade)
        try:
            async with trio.open_nursery() as nursery:
                conn.nursery = nursery
                try:
                    return await handler(request, upgrade)
                finally:
                    if upgrade.websocket is not None:
                        with trio.CancelScope(shield=True), trio.move_on_after(1):
                            await upgrade.websocket.aclose()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            conn.nursery = None

    async def _reply_then_drain(self, conn: _Connection, response: Response, head: bool) -> bool:
        """Reply without a handler, after reading (and discarding) a small body."""
        self._count(response.status)
        seen = 0
        while True:
            event = await conn.next_event()
            if isinstance(event, h11.Data):
                seen += len(event.data)
                if seen > 1 << 20:
                    await conn.send(response, head=head, close=True)
                    return False
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return False
        await conn.send(response, head=head)
        return True
