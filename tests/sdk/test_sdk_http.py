"""sdk.http against real loopback servers: answers, bounds, and every way of
not getting an answer ending in one Unreachable with a readable message.

Rules: 127.0.0.1 only, port 0, every wait bounded by ``fail_after``.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from sdk import http
from tests.relay.relay_procs import make_cert

Handler = Callable[[trio.abc.Stream], Awaitable[None]]


async def serve(nursery: trio.Nursery, handler: Handler,
                ssl_context: ssl.SSLContext | None = None) -> str:
    """Start a one-handler server; returns its base URL."""

    async def one(stream: trio.SocketStream) -> None:
        wrapped: trio.abc.Stream = stream
        if ssl_context is not None:
            wrapped = trio.SSLStream(stream, ssl_context, server_side=True)
        try:
            await handler(wrapped)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(wrapped)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, one, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"


async def read_head(stream: trio.abc.Stream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


def answer(raw: bytes) -> Handler:
    async def handler(stream: trio.abc.Stream) -> None:
        await read_head(stream)
        await stream.send_all(raw)

    return handler


def test_url_parse_splits_once_and_refuses_what_is_not_http() -> None:
    url = http.Url.parse("https://example.test:8443/prefix/")
    assert (url.tls, url.host, url.port, url.netloc, url.path) == (
        True, "example.test", 8443, "example.test:8443", "/prefix")
    assert url.websocket("/api/v2/x") == "wss://example.test:8443/prefix/api/v2/x"
    assert http.Url.parse("http://[::1]").host == "::1"
    assert http.Url.parse("http://h").port == 80
    for bad in ("ftp://h", "http://", "h:80", "http://h:99999"):
        with pytest.raises(ValueError, match="URL"):
            http.Url.parse(bad)


async def test_a_json_answer_comes_back_whole_with_its_headers_and_timing() -> None:
    seen: list[bytes] = []

    async def handler(stream: trio.abc.Stream) -> None:
        head = await read_head(stream)
        seen.append(head)
        body = b'{"ok": true}'
        await stream.send_all(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await serve(nursery, handler)
            resp = await http.request(base, "POST", "/api/v2/x?a=1",
                                      headers=[("X-Token", "t")], body=b"{}")
            nursery.cancel_scope.cancel()
    assert resp.status == 201
    assert resp.json() == {"ok": True}
    assert resp.header("Content-Type") == "application/json"
    assert resp.head_seconds >= 0
    assert seen[0].startswith(b"POST /api/v2/x?a=1 HTTP/1.1\r\n")
    assert b"x-token: t" in seen[0].lower()
    assert b"connection: close" in seen[0].lower()


async def test_a_body_over_the_bound_is_refused_by_content_length_and_by_counting() -> None:
    declared = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000)
    chunked = answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"100\r\n" + b"y" * 256 + b"\r\n" + b"100\r\n" + b"y" * 256
                     + b"\r\n0\r\n\r\n")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for handler, match in ((declared, "1000 bytes is over 300"),
                                   (chunked, "over 300 bytes")):
                base = await serve(nursery, handler)
                with pytest.raises(http.ResponseTooLarge, match=match):
                    await http.request(base, "GET", "/", max_body=300)
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("raw", "match"), [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "valid HTTP/1.1"),
    (b"", "broke"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (http.MAX_HEAD + 10), "valid HTTP/1.1"),
])
async def test_what_is_not_an_http_answer_is_unreachable_with_a_reason(raw: bytes,
                                                                      match: str) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await serve(nursery, answer(raw))
            with pytest.raises(http.Unreachable, match=match):
                await http.request(base, "GET", "/")
            nursery.cancel_scope.cancel()


async def test_silence_ends_at_the_timeout_and_a_closed_port_at_once() -> None:
    async def silent(stream: trio.abc.Stream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await serve(nursery, silent)
            with pytest.raises(http.Unreachable, match=r"did not answer within 0\.2 s"):
                await http.request(base, "GET", "/", timeout=0.2)
            nursery.cancel_scope.cancel()
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(http.Unreachable, match="cannot reach"):
        await http.request(f"http://127.0.0.1:{port}", "GET", "/")


async def test_a_header_that_is_not_http_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="cannot send"):
        await http.request("http://127.0.0.1:1", "GET", "/", headers=[("X", "a\r\nb")])


async def test_tls_is_verified_against_the_given_ca_bundle(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = await serve(nursery, answer(b"HTTP/1.1 204 No Content\r\n\r\n"), server_ctx)
            resp = await http.request(base, "GET", "/", ssl_context=http.tls_context(cert))
            assert resp.status == 204
            with pytest.raises(http.Unreachable, match=r"TLS with .* failed"):
                await http.request(base, "GET", "/")  # the system CAs do not know it
            nursery.cancel_scope.cancel()
    with pytest.raises(ValueError, match="cannot load CA bundle"):
        http.tls_context(str(tmp_path / "missing.pem"))
