"""Attack class: request bodies the server would buffer before refusing them (issue 11 #4).

The regression wall: a body over its route's limit is refused at the head
(413, by ``Content-Length``) or as soon as it goes over (chunked); bodies in
flight share one budget (503 + ``Retry-After``); a mount's head check runs
before any body byte is read, and coderd uses it so that an unauthenticated
POST to ``/api/v2`` gets 401 without its body being read.  Against a real
``burrow server``: a 60 MiB attempt does not grow the server's memory by
anything like the body's size.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.burrow.server_proc import cli_env, wait_listening
from web.frontdoor import FrontDoor
from web.http import Request, RequestHead, Response, Upgrade
from web.limits import DoorLimits, Refusal
from web.listener import parse_listen, serve_http

MiB = 1024 * 1024
PUSH = "/api/v2/templates/t/versions"  # needs a template admin; takes a 16 MiB tar


class Sink:
    """A handler that records what reached it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, req: Request, up: Upgrade) -> Response:
        self.calls += 1
        return Response.json(200, {"got": len(req.body)})


async def need_auth(head: RequestHead) -> Response | None:
    if head.header("authorization"):
        return None
    return Response.error(401, "authentication required")


@asynccontextmanager
async def door_at(door: FrontDoor) -> AsyncIterator[tuple[str, int]]:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_http, door, "127.0.0.1:0")
        yield parse_listen(url.split("//", 1)[1])
        nursery.cancel_scope.cancel()


async def answer(host: str, port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send ``head`` (and ``body``, if any) and return the first response's status and head."""
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(head + body)
        got = b""
        while b"\r\n\r\n" not in got:
            data = await stream.receive_some()
            assert data, got
            got += data
        return int(got.split(b" ", 2)[1]), got.partition(b"\r\n\r\n")[0]


def post_head(path: str, length: int | None, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: h", *extra]
    lines.append(f"Content-Length: {length}" if length is not None
                 else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def test_content_length_over_the_limit_is_refused_before_the_body() -> None:
    door, sink = FrontDoor(), Sink()
    door.mount("/up", sink, max_body=1000)
    async with door_at(door) as (host, port):
        with trio.fail_after(10):  # only the head is ever sent
            status, _ = await answer(host, port, post_head("/up", 50 * MiB))
    assert status == 413
    assert sink.calls == 0
    assert door.counters[Refusal.BODY_TOO_LARGE] == 1


async def test_chunked_body_is_refused_as_soon_as_it_goes_over() -> None:
    door, sink = FrontDoor(), Sink()
    door.mount("/up", sink, max_body=1000)
    async with door_at(door) as (host, port):
        with trio.fail_after(10):  # 1,200 bytes and no last chunk: the answer comes anyway
            status, _ = await answer(host, port, post_head("/up", None),
                                     chunk(b"x" * 600) + chunk(b"y" * 600))
            assert status == 413
            ok, _ = await answer(host, port, post_head("/up", None), chunk(b"z" * 600) + chunk(b""))
            assert ok == 200
    assert sink.calls == 1


async def test_head_check_refuses_before_the_body_is_read() -> None:
    door, sink = FrontDoor(), Sink()
    door.mount("/api", sink, max_body=64 * MiB, head_check=need_auth)
    async with door_at(door) as (host, port):
        with trio.fail_after(10):
            status, _ = await answer(host, port, post_head("/api/x", 60 * MiB))
            assert status == 401
            status, _ = await answer(host, port, post_head("/api/x", None))
            assert status == 401
            status, _ = await answer(host, port, post_head("/api/x", 2, "Authorization: y"), b"{}")
            assert status == 200
    assert sink.calls == 1
    assert door.counters[Refusal.HEAD_CHECK] == 2


async def test_bodies_share_one_budget() -> None:
    door, sink = FrontDoor(limits=DoorLimits(body_budget=1000)), Sink()
    door.mount("/up", sink, max_body=10_000)
    async with door_at(door) as (host, port):
        with trio.fail_after(10):
            status, head = await answer(host, port, post_head("/up", 5000))
            assert status == 503
            assert b"Retry-After: " in head
            status, _ = await answer(host, port, post_head("/up", None),
                                     b"".join(chunk(b"x" * 600) for _ in range(3)))
            assert status == 503
            status, _ = await answer(host, port, post_head("/up", 900), b"x" * 900)
            assert status == 200
    assert door.counters[Refusal.BODY_BUDGET] == 2
    assert door.counters["body_bytes_buffered"] == 0  # given back after each request


# --- against a real burrow server ------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "burrow.cli", "server", "--listen", "127.0.0.1:0",
         "--data-dir", str(tmp_path / "data"), "--provisioner-daemons", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(tmp_path),
    )
    try:
        try:
            url = wait_listening(proc)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        host, port = parse_listen(url.split("//", 1)[1])
        yield proc, host, port
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def peak_rss(pid: int) -> int:
    """The process's peak resident size (a body freed after the request still shows)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def attempt(host: str, port: int, head: bytes, size: int) -> int:
    """Send ``head`` and push up to ``size`` body bytes while waiting for the answer."""
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(head)

        async def push() -> None:
            piece = b"\0" * MiB
            try:
                for _ in range(size // MiB):
                    await stream.send_all(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the server closed: it never wanted the body

        got = b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(push)
            while b"\r\n\r\n" not in got:
                data = await stream.receive_some()
                assert data, got
                got += data
            nursery.cancel_scope.cancel()
        return int(got.split(b" ", 2)[1])


async def test_unauthenticated_api_post_is_refused_before_its_body(
    server: tuple[subprocess.Popen[str], str, int],
) -> None:
    _, host, port = server
    with trio.fail_after(30):
        # Under the API's 16 MiB cap, so only the missing credential refuses it.
        status, head = await answer(host, port, post_head(PUSH, 15 * MiB))
        assert status == 401
        assert b"application/json" in head
        status, _ = await answer(host, port, post_head(PUSH, None))
        assert status == 401
        status, _ = await answer(host, port, post_head(PUSH, 15 * MiB,
                                                       "Burrow-Session-Token: aaaaaaaaaa-forged"))
        assert status == 401
        # Over it: 413 from the front door, credential or not.
        status, _ = await answer(host, port, post_head(PUSH, 60 * MiB))
        assert status == 413
        # The provisioner daemons' endpoint is a WebSocket: no body at all.
        status, _ = await answer(host, port, post_head("/api/v2/provisionerd", 60 * MiB))
        assert status == 413
        # A public route with a small body still works as before.
        login = json.dumps({"email": "a@b.c", "password": "x"}).encode()
        status, _ = await answer(host, port, post_head("/api/v2/users/login", len(login)), login)
        assert status in (400, 401)


async def test_a_60_mib_attempt_does_not_grow_the_server_by_its_size(
    server: tuple[subprocess.Popen[str], str, int],
) -> None:
    proc, host, port = server
    with trio.fail_after(60):
        await answer(host, port, b"GET /api/v2/buildinfo HTTP/1.1\r\nHost: h\r\n\r\n")
        before = peak_rss(proc.pid)
        statuses = [
            await attempt(host, port, post_head("/api/v2/provisionerd", 60 * MiB), 60 * MiB),
            await attempt(host, port, post_head(PUSH, None), 60 * MiB),
            await attempt(host, port, post_head(PUSH, 60 * MiB), 60 * MiB),
        ]
        after = peak_rss(proc.pid)
    assert after - before < 16 * MiB, (before, after)
    assert statuses == [413, 401, 413]


async def test_a_failing_head_check_is_a_500_not_a_dead_server() -> None:
    async def broken(head: RequestHead) -> Response | None:
        raise RuntimeError("bug")

    door, sink = FrontDoor(), Sink()
    door.mount("/api", sink, head_check=broken)
    door.mount("/ok", sink)
    async with door_at(door) as (host, port):
        with trio.fail_after(10):
            status, _ = await answer(host, port, post_head("/api/x", 10))
            assert status == 500
            status, _ = await answer(host, port, post_head("/ok", 2), b"{}")
            assert status == 200
