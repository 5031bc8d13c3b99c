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

Limits (``web.limits``).  ``serve_stream`` first takes a connection slot
(global and per peer IP) or answers a canned 503 and closes.  Each cycle then
waits up to ``idle_timeout`` for the first byte of a request (on a fresh
connection: ``header_timeout``) and ``header_timeout`` from that byte for the
complete head; the first bytes must be able to start a request line (a
method token and a space), else the connection closes at once, so random
bytes or a TLS hello on the plain port never sit in the parser.  At the head,
a declared ``Content-Length`` over the mount's ``max_body`` gets 413, then
the mount's ``HeadCheck`` may refuse (both before a byte of body is read),
then the body is reserved against the global body budget (503 when it does
not fit; a chunked body is reserved as it arrives).  Every refusal is
counted under its ``Refusal`` key (``FrontDoor.counters``).

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
from dataclasses import dataclass

import h11
import trio

from web.connection import MAX_HEAD, RECEIVE_SIZE, Connection, UpgradeOffer
from web.http import Handler, HeadCheck, Request, RequestHead, Response
from web.limits import DoorLimits, Gate, Refusal, source_of

log = logging.getLogger("burrow.web.http")

LINGER = 0.5  # seconds a refused connection is drained so the 503 is not lost to a reset
# Refused connections being answered at once: the first MAX_LINGERING linger
# LINGER s, the next ones SHORT_LINGER s (enough to read a request that has
# already arrived), and past MAX_REFUSING they are closed unanswered -- so
# refusing a flood cannot itself use up the descriptors kept in reserve
# (``web.limits.FD_HEADROOM``).
MAX_LINGERING = 32
MAX_REFUSING = 64
SHORT_LINGER = 0.02
DRAIN_MAX = 1 << 20  # body bytes read and discarded to keep a connection after an error


def _canned(status: int, reason: str, message: str, retry_after: int) -> bytes:
    body = Response.error(status, message).body
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: {retry_after}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body

@dataclass(frozen=True)
class _Mount:
    prefix: str
    handler: Handler
    max_body: int
    head_check: HeadCheck | None = None


def _matches(prefix: str, path: str) -> bool:
    if prefix in ("", "/"):
        return True
    base = prefix.rstrip("/")
    return path == base or path.startswith(base + "/")

class FrontDoor:
    """Routes HTTP/1.1 requests on a stream to handlers mounted by path prefix.

    Args:
        limits: caps and deadlines (``DoorLimits()`` when None).
        idle_timeout / body_timeout / header_timeout: override those of ``limits``.

    Attributes:
        gate: open connections and the body budget, with the refusal counters.
        requests: requests served; errors: responses by status >= 400.
    """

    def __init__(
        self,
        *,
        limits: DoorLimits | None = None,
        idle_timeout: float | None = None,
        body_timeout: float | None = None,
        header_timeout: float | None = None,
    ) -> None:
        self._mounts: list[_Mount] = []
        self.limits = limits if limits is not None else DoorLimits()
        if idle_timeout is not None:
            self.limits.idle_timeout = idle_timeout
        if body_timeout is not None:
            self.limits.body_timeout = body_timeout
        if header_timeout is not None:
            self.limits.header_timeout = header_timeout
        self.gate = Gate(self.limits)
        self._lingering = 0
        self.requests = 0
        self.errors: dict[int, int] = {}

    @property
    def idle_timeout(self) -> float:
        return self.limits.idle_timeout

    @property
    def body_timeout(self) -> float:
        return self.limits.body_timeout

    @property
    def counters(self) -> dict[str, int]:
        """Metric name -> value: refusals by ``Refusal`` key, open connections, buffered bytes."""
        return self.gate.snapshot()

    def mount(
        self,
        prefix: str,
        handler: Handler,
        *,
        max_body: int = 1 << 20,
        head_check: HeadCheck | None = None,
    ) -> None:
        """Serve every path under ``prefix`` with ``handler`` (longest prefix wins).

        ``head_check``, when given, sees each request head before its body is
        read and may refuse it with a ``Response``.

        Raises:
            ValueError: ``prefix`` does not start with ``/`` or is already mounted.
        """
        if not prefix.startswith("/"):
            raise ValueError(f"mount prefix must start with '/': {prefix!r}")
        if any(m.prefix == prefix for m in self._mounts):
            raise ValueError(f"prefix already mounted: {prefix!r}")
        self._mounts.append(_Mount(prefix, handler, max_body, head_check))
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
        ip = source_of(remote)
        refused = self.gate.admit(ip)
        if refused is not None:
            await self._refuse(stream, refused)
            return
        try:
            await self._loop(Connection(stream, remote, scheme))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except h11.LocalProtocolError as exc:
            log.error("HTTP response error for %s: %s", remote, exc)
        finally:
            self.gate.release(ip)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _refuse(self, stream: trio.abc.Stream, reason: Refusal) -> None:
        """Answer 503 without reading a request, then close (after a short drain)."""
        message = (
            "server busy: too many connections"
            if reason is Refusal.GLOBAL_CAP
            else "too many connections from your address"
        )
        data = _canned(503, "Service Unavailable", message, self.limits.retry_after)
        if self._lingering >= MAX_REFUSING:
            await trio.aclose_forcefully(stream)
            return
        linger = LINGER if self._lingering < MAX_LINGERING else SHORT_LINGER
        self._lingering += 1
        try:
            with trio.move_on_after(linger):
                await stream.send_all(data)
                # Closing with unread request bytes would reset the connection
                # and could destroy the 503 in flight: half-close, then drain.
                with contextlib.suppress(NotImplementedError, AttributeError):
                    await stream.send_eof()  # type: ignore[attr-defined]
                seen = 0
                while seen < MAX_HEAD:
                    chunk = await stream.receive_some(RECEIVE_SIZE)
                    if not chunk:
                        break
                    seen += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._lingering -= 1
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _loop(self, conn: Connection) -> None:
        first = True
        while True:
            try:
                wait = self.limits.idle_timeout
                if first:  # a fresh connection has no business being idle
                    wait = min(wait, self.limits.header_timeout)
                event = await conn.read_head(wait, self.limits.header_timeout)
                if isinstance(event, Refusal):
                    if first and event is Refusal.IDLE_TIMEOUT:
                        event = Refusal.HEADER_TIMEOUT  # connected, then sent nothing
                    self.gate.count(event)
                    return
                first = False
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

    async def _one(self, conn: Connection, head: h11.Request) -> bool:
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
        declared = headers.get("content-length")
        length = int(declared) if declared is not None and declared.isdigit() else None
        mount = self.route(path)
        if mount is None:
            not_found = Response.error(404, "not found")
            if length is not None and length > DRAIN_MAX:  # not worth reading to keep alive
                self._count(404)
                await conn.send(not_found, head=is_head, close=True)
                return False
            return await self._reply_then_drain(conn, not_found, is_head)
        if length is not None and length > mount.max_body:
            return await self._refuse_head(
                conn, Refusal.BODY_TOO_LARGE, Response.error(413, "request body too large"),
                is_head, has_body=True,
            )
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        has_body = bool(length) or "transfer-encoding" in headers
        if mount.head_check is not None:
            try:
                refusal = await mount.head_check(
                    RequestHead(method, path, query, headers, conn.remote, conn.scheme, length)
                )
            except Exception:
                log.exception("head check for %s %s failed", method, path)
                refusal = Response.error(500, "internal server error")
            if refusal is not None:
                return await self._refuse_head(
                    conn, Refusal.HEAD_CHECK, refusal, is_head, has_body=has_body
                )
        reserved = 0
        try:
            if length and not self.gate.reserve_body(length):
                return await self._refuse_head(conn, Refusal.BODY_BUDGET, self._busy(), is_head,
                                               has_body=True)
            reserved = length or 0
            body = bytearray()
            if conn.h11.they_are_waiting_for_100_continue:
                # curl and friends otherwise wait a second before sending a body.
                data = conn.h11.send(h11.InformationalResponse(status_code=100, headers=[]))
                assert data is not None
                await conn.stream.send_all(data)
            with trio.move_on_after(self.limits.body_timeout) as slow:
                while True:
                    event = await conn.next_event()
                    if isinstance(event, h11.Data):
                        body += event.data
                        if len(body) > mount.max_body:
                            return await self._refuse_head(
                                conn, Refusal.BODY_TOO_LARGE,
                                Response.error(413, "request body too large"), is_head,
                                has_body=True,
                            )
                        if len(body) > reserved:  # chunked: reserve as it arrives
                            if not self.gate.reserve_body(len(body) - reserved):
                                return await self._refuse_head(
                                    conn, Refusal.BODY_BUDGET, self._busy(), is_head,
                                    has_body=True,
                                )
                            reserved = len(body)
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
                query=query,
                headers=headers,
                body=bytes(body),
                remote=conn.remote,
                scheme=conn.scheme,
            )
            del body
            return await self._handle(conn, mount, request, is_head)
        finally:
            self.gate.release_body(reserved)

    def _busy(self) -> Response:
        response = Response.error(503, "server busy: too many request bodies in flight")
        response.headers.append(("Retry-After", str(self.limits.retry_after)))
        return response

    async def _refuse_head(
        self, conn: Connection, reason: Refusal, response: Response, is_head: bool,
        *, has_body: bool,
    ) -> bool:
        """Answer a request refused before (the rest of) its body; False: close."""
        self.gate.count(reason)
        if not has_body:  # nothing to skip: the connection can go on
            return await self._reply_then_drain(conn, response, is_head)
        self._count(response.status)
        await conn.send(response, head=is_head, close=True)
        return False

    async def _handle(
        self, conn: Connection, mount: _Mount, request: Request, is_head: bool
    ) -> bool:
        method, path = request.method, request.path
        upgrade = UpgradeOffer(conn, request)
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
        self, conn: Connection, handler: Handler, request: Request, upgrade: UpgradeOffer
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

    async def _reply_then_drain(self, conn: Connection, response: Response, head: bool) -> bool:
        """Reply without a handler, after reading (and discarding) a small body."""
        self._count(response.status)
        seen = 0
        while True:
            event = await conn.next_event()
            if isinstance(event, h11.Data):
                seen += len(event.data)
                if seen > DRAIN_MAX:
                    await conn.send(response, head=head, close=True)
                    return False
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return False
        await conn.send(response, head=head)
        return True
