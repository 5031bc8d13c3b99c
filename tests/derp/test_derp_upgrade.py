"""derp.upgrade: the client side of the /derp upgrade, fed plain bytes at every split."""

from __future__ import annotations

import pytest

from derp.upgrade import (
    Http2Only,
    Outcome,
    Refused,
    ResponseReader,
    Switched,
    UpgradeError,
    derp_request,
    websocket_request,
)
from derp.websocket import accept_token

SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n"
          b"Derp-Version: 2\r\nDerp-Public-Key: ab\r\n\r\n")
FRAMES = b"\x01\x00\x00\x00\x28DERP..."
REFUSED = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nnope!"
# An HTTP/2 server's SETTINGS frame (empty), as a prior-knowledge server opens.
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def feed_split(reader_factory: type[ResponseReader] | None, data: bytes, cut: list[int],
               **kw: object) -> Outcome | None:
    reader = ResponseReader("DERP", **kw)  # type: ignore[arg-type]
    pieces, prev = [], 0
    for c in [*cut, len(data)]:
        pieces.append(data[prev:c])
        prev = c
    out: Outcome | None = None
    for piece in pieces:
        if not piece:
            continue
        out = reader.feed(piece)
        if out is not None:
            return out
    return out


def all_splits(data: bytes, **kw: object) -> list[Outcome | None]:
    results = [feed_split(None, data, [i], **kw) for i in range(len(data) + 1)]
    results.append(feed_split(None, data, list(range(1, len(data))), **kw))
    return results


def test_requests_are_http11_upgrades() -> None:
    req = derp_request("relay.example:443")
    assert req.startswith(b"GET /derp HTTP/1.1\r\n")
    assert b"upgrade: DERP\r\n" in req.lower().replace(b"derp", b"DERP")
    assert b"host: relay.example:443\r\n" in req.lower()
    ws = websocket_request("h", b"a2V5a2V5a2V5a2V5a2V5aw==")
    assert b"sec-websocket-protocol: derp" in ws.lower()
    assert b"sec-websocket-version: 13" in ws.lower()


def test_switch_keeps_trailing_bytes_at_every_split() -> None:
    for out in all_splits(SWITCH + FRAMES):
        assert isinstance(out, Switched)
        assert out.headers["derp-version"] == "2"
        # whatever arrived past the head is handed back (possibly fewer bytes
        # when the split put them in a later read, never other bytes)
        assert FRAMES.startswith(out.trailing)


def test_refused_4xx_signals_fallback_at_every_split() -> None:
    for out in all_splits(REFUSED):
        assert isinstance(out, Refused)
        assert out.status == 403
        assert out.fallback


def test_5xx_is_refused_without_fallback() -> None:
    out = ResponseReader("DERP").feed(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(out, Refused)
    assert not out.fallback


@pytest.mark.parametrize(
    "answer",
    [H2_SETTINGS + b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + bytes(8),
     b"HTTP/2 200\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"],
)
def test_http2_only_detected_at_every_split(answer: bytes) -> None:
    for out in all_splits(answer):
        assert isinstance(out, Http2Only)


def test_switch_to_another_protocol_is_an_error() -> None:
    bad = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"
    with pytest.raises(UpgradeError, match="switched"):
        ResponseReader("DERP").feed(bad)


def test_garbage_and_early_close_are_upgrade_errors() -> None:
    with pytest.raises(UpgradeError):
        ResponseReader("DERP").feed(b"SSH-2.0-OpenSSH_9.6\r\n")
    reader = ResponseReader("DERP")
    assert reader.feed(b"HTTP/1.1 101 Swi") is None
    with pytest.raises(UpgradeError, match="closed"):
        reader.feed(b"")


def test_websocket_accept_and_subprotocol_checked() -> None:
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    good = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_token(key) + b"\r\n"
            b"Sec-WebSocket-Protocol: derp\r\n\r\n")
    out = ResponseReader("websocket", websocket_key=key, subprotocol="derp").feed(good)
    assert isinstance(out, Switched)
    with pytest.raises(UpgradeError, match="Accept"):
        ResponseReader("websocket", websocket_key=b"other", subprotocol="derp").feed(good)
    with pytest.raises(UpgradeError, match="subprotocol"):
        ResponseReader("websocket", websocket_key=key, subprotocol="x").feed(good)
