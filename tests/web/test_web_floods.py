"""The front door under floods, on real loopback sockets (issue 12 #3).

Half-open heads are closed at the header deadline, non-HTTP bytes at once;
over a connection cap a client gets 503 JSON with ``Retry-After`` and the
connection is closed; running out of descriptors logs one warning, no
traceback, and the server serves again once connections go away.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from web.connection import could_be_http
from web.frontdoor import FrontDoor
from web.http import Request, Response, Upgrade
from web.limits import DoorLimits, Gate, Refusal
from web.listener import parse_listen, serve_http

HALF_HEAD = b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: "
FULL = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


async def hello(req: Request, up: Upgrade) -> Response:
    return Response.json(200, {"ok": True})


async def echo_raw(req: Request, up: Upgrade) -> None:
    stream = await up.accept_raw([], "echo")
    while data := await stream.receive_some():
        await stream.send_all(data)
    return None


@asynccontextmanager
async def door_at(door: FrontDoor) -> AsyncIterator[tuple[str, int]]:
    door.mount("/", hello)
    door.mount("/echo", echo_raw, max_body=0)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_http, door, "127.0.0.1:0")
        yield parse_listen(url.split("//", 1)[1])
        nursery.cancel_scope.cancel()


async def read_all(stream: trio.abc.Stream) -> bytes:
    out = b""
    try:
        while data := await stream.receive_some():
            out += data
    except trio.BrokenResourceError:  # a reset after the answer is fine
        pass
    return out


async def read_response(stream: trio.abc.Stream) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body."""
    got = b""
    while b"\r\n\r\n" not in got:
        data = await stream.receive_some()
        assert data, got
        got += data
    head, _, rest = got.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    while len(rest) < int(headers.get("content-length", "0")):
        rest += await stream.receive_some()
    return int(lines[0].split()[1]), headers, rest


async def get(host: str, port: int) -> int:
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(FULL)
        return (await read_response(stream))[0]


def test_could_be_http() -> None:
    assert could_be_http(b"GET / HTTP/1.1") is True
    assert could_be_http(b"\r\nPOST /x") is True
    assert could_be_http(b"GE") is None
    assert could_be_http(b"\x16\x03\x01\x02\x00") is False
    assert could_be_http(b" GET /") is False
    assert could_be_http(b"A" * 40) is False


def test_gate_caps_loopback_and_other_sources_apart() -> None:
    gate = Gate(DoorLimits(max_connections=10, max_per_source=2, max_per_loopback=5))
    assert [gate.admit("10.0.0.1") for _ in range(3)] == [None, None, Refusal.SOURCE_CAP]
    assert [gate.admit("127.0.0.1") for _ in range(6)][-2:] == [None, Refusal.SOURCE_CAP]
    assert gate.admit("10.0.0.2") is None
    assert gate.admit("10.0.0.2") is None
    assert gate.admit("10.0.0.3") is None  # the tenth
    assert gate.admit("10.0.0.4") is Refusal.GLOBAL_CAP
    gate.release("10.0.0.1")
    assert gate.admit("10.0.0.1") is None
    assert gate.counts[Refusal.SOURCE_CAP] == 2
    assert gate.counts[Refusal.GLOBAL_CAP] == 1


async def test_half_open_heads_are_closed_at_the_header_deadline() -> None:
    door = FrontDoor(header_timeout=0.3, idle_timeout=30)
    async with door_at(door) as (host, port):
        with trio.fail_after(10):
            streams = [await trio.open_tcp_stream(host, port) for _ in range(20)]
            for s in streams:
                await s.send_all(HALF_HEAD)
            silent = await trio.open_tcp_stream(host, port)  # sends nothing at all
            for s in [*streams, silent]:
                assert await read_all(s) == b""
                await s.aclose()
        assert door.counters[Refusal.HEADER_TIMEOUT] == 21
        assert door.counters["connections_open"] == 0


async def test_keep_alive_idles_longer_than_the_header_deadline() -> None:
    door = FrontDoor(header_timeout=0.2, idle_timeout=30)
    async with door_at(door) as (host, port):
        with trio.fail_after(10):
            async with await trio.open_tcp_stream(host, port) as stream:
                await stream.send_all(FULL)
                assert (await read_response(stream))[0] == 200
                await trio.sleep(0.6)  # idle between requests: allowed
                await stream.send_all(FULL)
                assert (await read_response(stream))[0] == 200


async def test_non_http_bytes_are_closed_at_once() -> None:
    door = FrontDoor(header_timeout=60, idle_timeout=60)
    rng = random.Random(12)
    junk = [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]  # a TLS ClientHello
    junk += [bytes([0x80 | rng.randrange(128)]) + rng.randbytes(40) for _ in range(10)]
    junk += [b"SSH-2.0-OpenSSH_9.2\r\n"]
    async with door_at(door) as (host, port):
        with trio.fail_after(10):  # far below the 60 s deadlines
            for data in junk:
                async with await trio.open_tcp_stream(host, port) as stream:
                    await stream.send_all(data)
                    assert await read_all(stream) == b""
        assert door.counters[Refusal.NOT_HTTP] == len(junk)


async def test_per_source_cap_answers_503_and_closes() -> None:
    door = FrontDoor(limits=DoorLimits(max_per_source=3, max_per_loopback=3))
    async with door_at(door) as (host, port):
        with trio.fail_after(10):
            held = [await trio.open_tcp_stream(host, port) for _ in range(3)]
            for s in held:  # each is served: the slots are taken
                await s.send_all(FULL)
                assert (await read_response(s))[0] == 200
            async with await trio.open_tcp_stream(host, port) as extra:
                status, headers, body = await read_response(extra)
                assert status == 503
                assert headers["retry-after"].isdigit()
                assert "your address" in json.loads(body)["message"]
                assert await read_all(extra) == b""  # then closed
        assert door.counters[Refusal.SOURCE_CAP] == 1
        for s in held:
            await s.aclose()


async def test_global_cap_answers_503_json_with_retry_after() -> None:
    door = FrontDoor(limits=DoorLimits(max_connections=4, max_per_loopback=100))
    async with door_at(door) as (host, port):
        with trio.fail_after(10):
            held = [await trio.open_tcp_stream(host, port) for _ in range(4)]
            for s in held:
                await s.send_all(FULL)
                assert (await read_response(s))[0] == 200
            async with await trio.open_tcp_stream(host, port) as extra:
                await extra.send_all(FULL)
                status, headers, body = await read_response(extra)
            assert status == 503
            assert headers["content-type"] == "application/json"
            assert int(headers["retry-after"]) > 0
            assert json.loads(body)["message"].startswith("server busy")
            await held.pop().aclose()
            while await get(host, port) != 200:  # the slot comes back once the close is seen
                await trio.sleep(0.05)
        assert door.counters[Refusal.GLOBAL_CAP] >= 1
        for s in held:
            await s.aclose()


async def test_upgraded_connections_hold_a_slot_past_the_header_deadline() -> None:
    door = FrontDoor(limits=DoorLimits(header_timeout=0.2, max_connections=50))
    async with door_at(door) as (host, port):
        with trio.fail_after(10):
            async with await trio.open_tcp_stream(host, port) as stream:
                await stream.send_all(b"GET /echo HTTP/1.1\r\nHost: h\r\nUpgrade: echo\r\n"
                                      b"Connection: Upgrade\r\n\r\n")
                got = b""
                while b"\r\n\r\n" not in got:
                    got += await stream.receive_some()
                assert got.startswith(b"HTTP/1.1 101 ")
                await trio.sleep(0.6)  # three header deadlines
                await stream.send_all(b"still here")
                assert await stream.receive_some() == b"still here"
                assert door.counters["connections_open"] == 1


async def test_the_api_answers_while_many_half_open_connections_are_held() -> None:
    door = FrontDoor(header_timeout=60)
    async with door_at(door) as (host, port):
        with trio.fail_after(20):
            held = [await trio.open_tcp_stream(host, port) for _ in range(300)]
            for s in held:
                await s.send_all(HALF_HEAD)
            for _ in range(5):
                with trio.fail_after(5):
                    assert await get(host, port) == 200
            assert door.counters["connections_open"] >= 300  # (the last GET may not be gone yet)
            for s in held:
                await s.aclose()


SERVER = textwrap.dedent(
    """
    import logging, resource, sys
    import trio
    from web.frontdoor import FrontDoor
    from web.http import Response
    from web.limits import DoorLimits
    from web.listener import serve_http

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    async def hello(req, up):
        return Response.json(200, {"ok": True})

    async def main():
        # Caps far above the fd limit: this is about what happens without them.
        door = FrontDoor(limits=DoorLimits(max_connections=10_000, max_per_loopback=10_000,
                                           header_timeout=60))
        door.mount("/", hello)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_http, door, "127.0.0.1:0")
            print(url, flush=True)
            await trio.sleep_forever()

    trio.run(main)
    """
)


async def test_out_of_descriptors_is_one_warning_and_no_traceback() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        url = await trio.to_thread.run_sync(proc.stdout.readline)
        assert url.startswith("http://"), url
        host, port = parse_listen(url.strip().split("//", 1)[1])
        with trio.fail_after(30):
            held = [await trio.open_tcp_stream(host, port) for _ in range(120)]
            for s in held:
                await s.send_all(HALF_HEAD)
            await trio.sleep(1.5)  # the server now retries accept, out of descriptors
            for s in held:
                await s.aclose()
            status = 0
            while status != 200:  # it serves again once the connections are gone
                try:
                    with trio.fail_after(2):
                        status = await get(host, port)
                except (trio.TooSlowError, OSError, AssertionError):
                    await trio.sleep(0.1)
    finally:
        proc.terminate()
        _, err = await trio.to_thread.run_sync(proc.communicate)
    assert "Traceback" not in err, err
    warnings = [ln for ln in err.splitlines() if "cannot accept connections" in ln]
    assert len(warnings) == 1, err
    assert "EMFILE" in warnings[0]


def test_refusal_counters_are_prometheus_metrics() -> None:
    from coderd.metrics import CoderdMetrics, render

    door = FrontDoor(limits=DoorLimits(max_connections=1))
    door.gate.admit("10.0.0.1")
    door.gate.admit("10.0.0.2")
    text = render(CoderdMetrics(), jobs_by_status={}, daemons_connected=0, web=door.counters)
    assert "burrow_web_refused_global_cap 1" in text
    assert "# TYPE burrow_web_connections_open gauge" in text
    assert "burrow_web_closed_not_http 0" in text
