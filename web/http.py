"""Handler types of burrow's HTTP/1.1 front door.

A handler is an async function ``(Request, Upgrade) -> Response | None``.  The
front door (``web.frontdoor.FrontDoor``) reads the whole request body (bounded
by the mount's ``max_body``) before calling it, so handlers never touch the
socket unless they take the connection over through ``Upgrade``.  A handler
returns ``None`` only after it called one of the ``accept_*`` methods; the
connection then belongs to it and is closed when the handler returns.

A mount may also declare a ``HeadCheck``: called with the ``RequestHead``
once the head is parsed and before a byte of the body is read, it returns a
``Response`` to refuse the request (e.g. 401 for a request without any
credential) or None to go on.  A refused body is never read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio
import trio_websocket


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request.

    Attributes:
        method: upper-case method, e.g. ``"GET"``.
        path: percent-decoded path without the query, e.g. ``"/api/v2/users/me"``.
        query: parsed query string, every name mapped to all its values.
        headers: lower-cased names; repeated headers joined with ``", "``.
        body: the whole body, already read.
        remote: ``"ip:port"`` of the peer.
        scheme: ``"http"`` or ``"https"``.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    remote: str
    scheme: str

    def header(self, name: str, default: str = "") -> str:
        """The value of header ``name`` (case-insensitive), or ``default``."""
        return self.headers.get(name.lower(), default)


@dataclass(frozen=True)
class RequestHead:
    """A request before its body: what a ``HeadCheck`` sees.

    Attributes are those of ``Request``; ``content_length`` is the declared
    body size (None for a chunked body or none at all).
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    remote: str
    scheme: str
    content_length: int | None

    def header(self, name: str, default: str = "") -> str:
        """The value of header ``name`` (case-insensitive), or ``default``."""
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    """A complete HTTP response; ``Content-Length`` is added by the front door."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(
        cls, status: int, obj: object, headers: Sequence[tuple[str, str]] = ()
    ) -> Response:
        """A JSON response with ``Content-Type: application/json``.

        Raises:
            TypeError: ``obj`` is not JSON-serialisable.
        """
        body = json.dumps(obj, separators=(",", ":")).encode()
        return cls(status, body, [("Content-Type", "application/json"), *headers])

    @classmethod
    def error(cls, status: int, message: str, detail: str | None = None) -> Response:
        """The house error shape: ``{"message": ..., "detail": ...}``."""
        obj: dict[str, str] = {"message": message}
        if detail is not None:
            obj["detail"] = detail
        return cls.json(status, obj)


class Upgrade(Protocol):
    """Lets a handler take the connection over (WebSocket or a raw 101 upgrade)."""

    @property
    def is_websocket(self) -> bool:
        """True when the request asked for ``Upgrade: websocket``."""
        ...

    async def accept_websocket(
        self, subprotocol: str | None = None
    ) -> trio_websocket.WebSocketConnection:
        """Complete the WebSocket handshake and return the connection.

        Raises:
            RuntimeError: the request is not a WebSocket upgrade, or the
                connection was already taken over.
        """
        ...

    async def accept_raw(
        self, headers: Sequence[tuple[str, str]], protocol: str
    ) -> trio.abc.Stream:
        """Send ``101 Switching Protocols`` (``Upgrade: protocol`` plus ``headers``).

        Returns the raw stream; bytes the client sent after the request are
        delivered first.

        Raises:
            RuntimeError: the connection was already taken over.
        """
        ...

    async def accept_websocket_stream(self, subprotocol: str | None = None) -> trio.abc.Stream:
        """Complete the WebSocket handshake and return the raw stream after it.

        The fast path for byte-stream WebSockets (``derp.websocket``): the
        returned stream is positioned after the 101 response; the caller runs
        the WebSocket framing itself.

        Raises:
            RuntimeError: the request is not a WebSocket upgrade, or the
                connection was already taken over.
        """
        ...


Handler = Callable[[Request, Upgrade], Awaitable[Response | None]]
HeadCheck = Callable[[RequestHead], Awaitable[Response | None]]
