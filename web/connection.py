"""One HTTP connection's state, and the ``Upgrade`` a handler gets for a request.

``Connection`` feeds the socket's bytes to h11 and keeps a bounded copy of
the current cycle's bytes (for WebSocket replay).  ``read_head`` reads the
head of a new cycle under two deadlines: ``wait`` for its first byte, and
``header_timeout`` from that byte for the rest; and it judges the first
bytes (``could_be_http``) so a peer that does not speak HTTP is dropped at
once instead of sitting in the parser until a deadline.  ``UpgradeOffer``
turns the connection over to a handler (raw 101, WebSocket); the connection
then drops its parser.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import h11
import trio
import trio_websocket
from wsproto.utilities import generate_accept_token

from web.http import Request, Response
from web.limits import Refusal
from web.prefixed import PrefixedStream

RECEIVE_SIZE = 65536
MAX_HEAD = 64 * 1024  # h11's limit on a request head; also bounds the replay copy
MAX_METHOD = 24  # longest method token accepted before the first space
TOKEN_BYTES = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


def could_be_http(prefix: bytes | bytearray) -> bool | None:
    """Can ``prefix`` (the first bytes of a cycle) start a request line?

    True once a method token and a space were seen, False as soon as a byte
    rules it out, None while undecided.
    """
    data = bytes(prefix).lstrip(b"\r\n")
    for i, byte in enumerate(data[: MAX_METHOD + 1]):
        if byte == 0x20:
            return i > 0
        if byte not in TOKEN_BYTES:
            return False
    return None if len(data) <= MAX_METHOD else False


class UpgradeOffer:
    """The ``Upgrade`` handed to a handler for one request."""

    def __init__(self, door: Connection, request: Request) -> None:
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

class Connection:
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

    async def _receive(self) -> bytes:
        data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
        if self.replay is not None:
            self.replay += data
            if len(self.replay) > MAX_HEAD:
                self.replay = None
        return data

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            self.h11.receive_data(await self._receive())

    async def read_head(
        self, wait: float, header_timeout: float
    ) -> h11.Event | type[h11.PAUSED] | Refusal:
        """The next event of a new cycle, or why the connection must close.

        Waits ``wait`` s for the first byte, then ``header_timeout`` s from it
        for the rest of the head; judges the first bytes with ``could_be_http``.
        """
        probe = bytearray(self.replay or b"")  # this cycle's bytes h11 already holds
        judged = False
        with trio.move_on_after(wait) as scope:
            if probe:
                scope.deadline = min(scope.deadline, trio.current_time() + header_timeout)
            while True:
                event = self.h11.next_event()
                if event is not h11.NEED_DATA:
                    return event  # type: ignore[return-value]
                if not judged and probe:
                    verdict = could_be_http(probe)
                    if verdict is False:
                        return Refusal.NOT_HTTP
                    judged = verdict is True
                data = await self._receive()
                if data and not probe:
                    scope.deadline = min(scope.deadline, trio.current_time() + header_timeout)
                if not judged:  # judged before h11 sees it: h11 would answer a 400
                    probe += data[: MAX_METHOD + 2]
                    if could_be_http(probe) is False:
                        return Refusal.NOT_HTTP
                self.h11.receive_data(data)
        return Refusal.HEADER_TIMEOUT if probe else Refusal.IDLE_TIMEOUT

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
