"""Client side of the HTTP/1.1 upgrade to DERP or to a WebSocket, sans-IO.

Theory of operation.  ``derp_request`` / ``websocket_request`` build the GET
that asks to switch protocols (through h11, so the bytes are valid HTTP/1.1).
``ResponseReader`` is fed the bytes the server answers with, in any split,
and returns ``None`` until it can decide, then one outcome:

- ``Switched``: 101 with the expected ``Upgrade`` (and, for WebSocket, the
  right ``Sec-WebSocket-Accept`` and subprotocol).  ``trailing`` holds bytes
  read past the response head -- the first bytes of the new protocol.
- ``Refused``: any other complete HTTP/1.x response head.  ``fallback`` is
  True for a 4xx (a proxy that blocks the upgrade: try WebSocket).
- ``Http2Only``: the server answered in HTTP/2 (``HTTP/2`` status line, an
  HTTP/2 connection preface, or an HTTP/2 SETTINGS/GOAWAY frame), which
  cannot carry the DERP upgrade: try WebSocket.

Anything else is ``UpgradeError`` (not HTTP at all, or a 101 to the wrong
protocol).  This module never imports trio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import h11

from derp.errors import DerpError
from derp.websocket import accept_token

MAX_HEAD = 64 * 1024
_H2_PREFACE = b"PRI * HTTP/2.0"


class UpgradeError(DerpError):
    """The server's answer to the upgrade request is not usable."""


@dataclass(frozen=True)
class Switched:
    """The server switched protocols; ``trailing`` bytes belong to the new one."""

    headers: dict[str, str]
    trailing: bytes


@dataclass(frozen=True)
class Refused:
    """The server answered with an ordinary response instead of 101."""

    status: int
    headers: dict[str, str]

    @property
    def fallback(self) -> bool:
        """True when WebSocket should be tried instead (a 4xx answer)."""
        return 400 <= self.status < 500


@dataclass(frozen=True)
class Http2Only:
    """The server speaks only HTTP/2: the DERP upgrade cannot work there."""


Outcome = Switched | Refused | Http2Only


def _request(host: str, path: str, headers: list[tuple[str, str]]) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    data = conn.send(
        h11.Request(method="GET", target=path, headers=[("Host", host), *headers])
    )
    assert data is not None
    return data


def derp_request(host: str, path: str = "/derp") -> bytes:
    """The ``GET /derp`` with ``Upgrade: DERP``."""
    return _request(host, path, [("Upgrade", "DERP"), ("Connection", "Upgrade")])


def websocket_request(
    host: str, key: bytes, path: str = "/derp", subprotocol: str = "derp"
) -> bytes:
    """The WebSocket opening handshake for ``path`` (no extensions: no compression)."""
    return _request(
        host,
        path,
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key.decode("ascii")),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Protocol", subprotocol),
        ],
    )


def _looks_http2(data: bytes) -> bool | None:
    """True/False once decidable from the first bytes, None while too short."""
    n = len(data)
    if data[:7] == b"HTTP/1."[:n]:
        return False if n >= 7 else None
    if data[:6] == b"HTTP/2"[:n]:
        return True if n >= 6 else None
    if data[: len(_H2_PREFACE)] == _H2_PREFACE[:n]:
        return True if n >= len(_H2_PREFACE) else None
    if n < 9:
        return None
    # An HTTP/2 frame header: 24-bit length, type, flags, 31-bit stream id 0;
    # a server speaking only HTTP/2 opens with SETTINGS (or says GOAWAY).
    ftype = data[3]
    stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
    return ftype in (0x04, 0x07) and stream_id == 0


class ResponseReader:
    """Reads the server's answer to one upgrade request.

    Args:
        protocol: the ``Upgrade`` value asked for (``"DERP"`` or ``"websocket"``).
        websocket_key: for WebSocket, the ``Sec-WebSocket-Key`` that was sent.
        subprotocol: for WebSocket, the subprotocol that must be agreed.
    """

    def __init__(
        self,
        protocol: str,
        *,
        websocket_key: bytes | None = None,
        subprotocol: str | None = None,
    ) -> None:
        self.protocol = protocol
        self._key = websocket_key
        self._subprotocol = subprotocol
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        # h11 must have sent a request to accept a response; replay ours.
        self._conn.send(
            h11.Request(
                method="GET",
                target="/",
                headers=[("Host", "x"), ("Upgrade", protocol), ("Connection", "Upgrade")],
            )
        )
        self._conn.send(h11.EndOfMessage())
        self._head = b""
        self._decided_http1 = False

    def feed(self, data: bytes) -> Outcome | None:
        """Feed response bytes; returns the outcome once known, else None.

        ``b""`` means the server closed the connection.

        Raises:
            UpgradeError: not an HTTP/1.x answer, a 101 to another protocol,
                a bad WebSocket accept token, or the connection closed early.
        """
        if not self._decided_http1:
            self._head += data
            verdict = _looks_http2(self._head)
            if verdict is None and data:
                return None
            if verdict:
                return Http2Only()
            if not self._head.startswith(b"HTTP/1."):
                raise UpgradeError(f"not an HTTP response: {self._head[:20]!r}")
            self._decided_http1 = True
            data, self._head = self._head, b""
        try:
            self._conn.receive_data(data)
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpgradeError(f"malformed HTTP response: {exc}") from exc
        if event is h11.NEED_DATA:
            if not data:
                raise UpgradeError("connection closed before the response head")
            return None
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            headers = _headers(event.headers)
            self._check_switch(headers)
            trailing, _ = self._conn.trailing_data
            return Switched(headers, bytes(trailing))
        if isinstance(event, h11.InformationalResponse):
            raise UpgradeError(f"unexpected informational response {event.status_code}")
        if isinstance(event, h11.Response):
            return Refused(event.status_code, _headers(event.headers))
        raise UpgradeError(f"unexpected HTTP event {type(event).__name__}")

    def _check_switch(self, headers: dict[str, str]) -> None:
        got = headers.get("upgrade", "")
        if got.lower() != self.protocol.lower():
            raise UpgradeError(f"server switched to {got!r}, not {self.protocol!r}")
        if self._key is not None:
            want = accept_token(self._key).decode()
            if headers.get("sec-websocket-accept", "") != want:
                raise UpgradeError("bad Sec-WebSocket-Accept")
        if self._subprotocol is not None:
            sub = headers.get("sec-websocket-protocol", "")
            if sub != self._subprotocol:
                raise UpgradeError(f"server chose subprotocol {sub!r}, not {self._subprotocol!r}")


def _headers(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out
