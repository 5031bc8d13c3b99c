"""The front door on real loopback sockets: routing, limits, errors, upgrades."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio
import trio.testing
import trio_websocket
from hypothesis import given, settings
from hypothesis import strategies as st

from web.frontdoor import FrontDoor
from web.http import Request, Response, Upgrade
from web.listener import parse_listen, serve_http


async def hello(req: Request, up: Upgrade) -> Response:
    return Response.json(200, {"path": req.path, "query": req.query, "body": req.body.decode(),
                               "remote": req.remote, "scheme": req.scheme,
                               "x": req.header("x-test")})


async def api(req: Request, up: Upgrade) -> Response:
    return Response.json(200, {"api": req.path})


async def boom(req: Request, up: Upgrade) -> Response:
    raise RuntimeError("secret internal detail")


async def echo_raw(req: Request, up: Upgrade) -> None:
    stream = await up.accept_raw([("X-Raw", "1")], "echo")
    for _ in range(100):
        data = await stream.receive_some()
        if not data:
            break
        await stream.send_all(data)
    return None


async def echo_ws(req: Request, up: Upgrade) -> Response | None:
    if not up.is_websocket:
        return Response.error(426, "websocket required")
    ws = await up.accept_websocket("echo")
    for _ in range(100):
        try:
            msg = await ws.get_message()
        except trio_websocket.ConnectionClosed:
            break
        await ws.send_message(msg)
    return None


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    door = FrontDoor()
    door.mount("/", hello)
    door.mount("/api/v2", api, max_body=10)
    door.mount("/boom", boom)
    door.mount("/raw", echo_raw)
    door.mount("/ws", echo_ws)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_http, door, "127.0.0.1:0")
        yield url
        nursery.cancel_scope.cancel()


async def exchange(url: str, raw: bytes, *, until_close: bool = True) -> bytes:
    host, port = parse_listen(url.split("//", 1)[1])
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(raw)
            out = b""
            for _ in range(1000):
                data = await stream.receive_some()
                if not data:
                    break
                out += data
                if not until_close and b"\r\n\r\n" in out:
                    break
            return out


def parse(resp: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return status, headers, body


async def test_routes_longest_prefix_and_parses_request(base_url: str) -> None:
    out = await exchange(base_url, b"GET /a%20b?x=1&x=2 HTTP/1.1\r\nHost: h\r\nX-Test: one\r\n"
                                   b"X-Test: two\r\nConnection: close\r\n\r\n")
    status, headers, body = parse(out)
    assert status == 200
    assert headers["content-type"] == "application/json"
    obj = json.loads(body)
    assert obj["path"] == "/a b"
    assert obj["query"] == {"x": ["1", "2"]}
    assert obj["x"] == "one, two"
    assert obj["scheme"] == "http"
    assert obj["remote"].startswith("127.0.0.1:")
    out = await exchange(base_url, b"GET /api/v2/users/me HTTP/1.1\r\nHost: h\r\n"
                                   b"Connection: close\r\n\r\n")
    assert json.loads(parse(out)[2]) == {"api": "/api/v2/users/me"}


async def test_keep_alive_serves_pipelined_requests(base_url: str) -> None:
    req = b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
    last = b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    out = await exchange(base_url, req + req + last)
    assert out.count(b"HTTP/1.1 200") == 3
    assert out.count(b'"body":"abc"') == 2


async def test_unknown_path_is_404_json() -> None:
    door = FrontDoor()
    door.mount("/api", api)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_http, door, "127.0.0.1:0")
        out = await exchange(url, b"GET /nope HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        status, _, body = parse(out)
        assert status == 404
        assert json.loads(body)["message"] == "not found"
        # /apix is not under /api
        out = await exchange(url, b"GET /apix HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert parse(out)[0] == 404
        nursery.cancel_scope.cancel()


async def test_body_over_limit_is_413(base_url: str) -> None:
    out = await exchange(base_url, b"POST /api/v2/x HTTP/1.1\r\nHost: h\r\n"
                                   b"Content-Length: 11\r\n\r\nhello world")
    assert parse(out)[0] == 413
    chunked = (b"POST /api/v2/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n")
    out = await exchange(base_url, chunked)
    assert parse(out)[0] == 413


async def test_malformed_http_is_400_and_closed(base_url: str) -> None:
    out = await exchange(base_url, b"THIS IS NOT HTTP\r\n\r\n")
    status, _, body = parse(out)
    assert status == 400
    assert json.loads(body)["message"]


async def test_handler_exception_is_generic_500(base_url: str) -> None:
    out = await exchange(base_url, b"GET /boom HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    status, _, body = parse(out)
    assert status == 500
    assert b"secret" not in body
    assert b"Traceback" not in body


async def test_head_has_no_body(base_url: str) -> None:
    out = await exchange(base_url, b"HEAD /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    status, headers, body = parse(out)
    assert status == 200
    assert int(headers["content-length"]) > 0
    assert body == b""


async def test_raw_upgrade_replays_trailing_bytes(base_url: str) -> None:
    host, port = parse_listen(base_url.split("//", 1)[1])
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(b"GET /raw HTTP/1.1\r\nHost: h\r\nUpgrade: echo\r\n"
                                  b"Connection: Upgrade\r\n\r\nearly")
            out = b""
            while b"early" not in out:
                out += await stream.receive_some()
            status, headers, rest = parse(out)
            assert status == 101
            assert headers["upgrade"] == "echo"
            assert headers["x-raw"] == "1"
            assert rest == b"early"
            await stream.send_all(b"later")
            got = b""
            while len(got) < 5:
                got += await stream.receive_some()
            assert got == b"later"


async def test_trio_websocket_accept(base_url: str) -> None:
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(
            base_url.replace("http", "ws") + "/ws", subprotocols=["echo"]
        ) as ws:
            assert ws.subprotocol == "echo"
            await ws.send_message(b"x" * 100_000)
            assert await ws.get_message() == b"x" * 100_000


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:80") == ("::1", 80)
    for bad in ("nohost", "h:x", "h:70000", ""):
        with pytest.raises(ValueError, match=r"listen|port"):
            parse_listen(bad)


def test_mount_rejects_bad_prefix() -> None:
    door = FrontDoor()
    with pytest.raises(ValueError, match="start with"):
        door.mount("api", api)
    door.mount("/api", api)
    with pytest.raises(ValueError, match="already"):
        door.mount("/api", api)




async def test_slow_body_gets_408() -> None:
    door = FrontDoor(body_timeout=0.2)
    door.mount("/", hello)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_http, door, "127.0.0.1:0")
        out = await exchange(url, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab")
        assert parse(out)[0] == 408
        nursery.cancel_scope.cancel()


async def test_expect_100_continue_is_answered(base_url: str) -> None:
    host, port = parse_listen(base_url.split("//", 1)[1])
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                                  b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got:
                got += await stream.receive_some()
            assert got.startswith(b"HTTP/1.1 100 ")
            await stream.send_all(b"data")
            while b'"body":"data"' not in got:
                data = await stream.receive_some()
                assert data
                got += data


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=400),
    st.sampled_from(
        [b"", b"GET / HTTP/1.1\r\n", b"POST /api/v2 HTTP/1.1\r\nContent-Length: 5\r\n"]
    ),
)
def test_arbitrary_bytes_never_crash_the_front_door(junk: bytes, prefix: bytes) -> None:
    door = FrontDoor(idle_timeout=1, body_timeout=1)
    door.mount("/", hello)
    door.mount("/api/v2", api, max_body=10)

    async def main() -> bytes:
        client, server = trio.testing.memory_stream_pair()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(door.serve_stream, server, remote="t", scheme="http"))
                await client.send_all(prefix + junk)
                await client.send_eof()
                out = b""
                while data := await client.receive_some():
                    out += data
                return out

    out = trio.run(main)
    assert out == b"" or out.startswith(b"HTTP/1.1 ")
    assert b"Traceback" not in out
