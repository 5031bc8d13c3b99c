"""The userspace WAN link (``bench.link``): behaviour only, never speed.

Loopback only.  Time assertions are lower bounds (a delay holds bytes at least
that long, a rate cap delivers at most rate x time + one chunk), which a
loaded machine can only make truer.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from bench.link import READ, Shape, open_link, parse_hostport

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def _server(nursery: trio.Nursery, handler: Handler) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0,
                                                      host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    parts = []
    while data := await stream.receive_some(1 << 16):
        parts.append(data)
    return b"".join(parts)


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def test_bytes_arrive_intact_in_order_both_ways_and_half_close_passes(
        nursery: trio.Nursery) -> None:
    up = os.urandom(3 << 20)
    down = os.urandom(2 << 20)
    seen: dict[str, str] = {}

    async def handler(stream: trio.SocketStream) -> None:
        # Reads to EOF (the client's half-close must come through), then answers.
        seen["up"] = hashlib.sha256(await _read_all(stream)).hexdigest()
        await stream.send_all(down)
        await stream.aclose()

    port = await _server(nursery, handler)
    shape = Shape(delay_ms=2, jitter_ms=3)
    with trio.fail_after(30):
        async with open_link(("127.0.0.1", port), shape) as link:
            client = await trio.open_tcp_stream("127.0.0.1", link.port)
            await client.send_all(up)
            await client.send_eof()
            got = await _read_all(client)
            await client.aclose()
    assert seen["up"] == hashlib.sha256(up).hexdigest()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(down).hexdigest()
    assert link.connections == 1
    assert (link.forward, link.back) == (len(up), len(down))


async def test_half_close_keeps_the_other_direction_open(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        assert await _read_all(stream) == b"question"
        await trio.sleep(0.05)  # the client's side is half-closed, not gone
        await stream.send_all(b"answer")
        await stream.send_eof()
        await stream.aclose()

    port = await _server(nursery, handler)
    with trio.fail_after(10):
        async with open_link(("127.0.0.1", port), Shape(delay_ms=5)) as link:
            client = await trio.open_tcp_stream("127.0.0.1", link.port)
            await client.send_all(b"question")
            await client.send_eof()
            assert await _read_all(client) == b"answer"
            await client.aclose()


async def test_one_way_delay_holds_the_first_byte_at_least_that_long(
        nursery: trio.Nursery) -> None:
    arrived: list[float] = []

    async def handler(stream: trio.SocketStream) -> None:
        data = await stream.receive_some(64)
        arrived.append(trio.current_time())
        await stream.send_all(data)

    port = await _server(nursery, handler)
    with trio.fail_after(10):
        async with open_link(("127.0.0.1", port), Shape(delay_ms=80)) as link:
            client = await trio.open_tcp_stream("127.0.0.1", link.port)
            t0 = trio.current_time()
            await client.send_all(b"x" * 64)
            echoed = await client.receive_some(64)
            t1 = trio.current_time()
            await client.aclose()
    assert echoed
    assert arrived[0] - t0 >= 0.080
    assert t1 - t0 >= 0.160  # the echo crossed the link twice


async def test_rate_cap_delivers_at_most_rate_times_time_plus_one_chunk(
        nursery: trio.Nursery) -> None:
    rate_mbit = 16.0  # 2 MB/s: 1.5 MiB take at least ~0.79 s
    total = 3 << 19
    samples: list[tuple[float, int]] = []
    start: list[float] = []

    async def handler(stream: trio.SocketStream) -> None:
        got = 0
        while data := await stream.receive_some(1 << 16):
            got += len(data)
            samples.append((trio.current_time(), got))

    port = await _server(nursery, handler)
    with trio.fail_after(30):
        async with open_link(("127.0.0.1", port), Shape(rate_mbit=rate_mbit, queue_kib=64)
                             ) as link:
            client = await trio.open_tcp_stream("127.0.0.1", link.port)
            start.append(trio.current_time())
            await client.send_all(b"r" * total)
            await client.send_eof()
            while not samples or samples[-1][1] < total:
                await trio.sleep(0.02)
            await client.aclose()
    rate = rate_mbit * 1e6 / 8
    for when, got in samples:
        assert got <= rate * (when - start[0]) + READ
    assert samples[-1][0] - start[0] >= (total - READ) / rate


async def test_a_stalled_receiver_stops_the_link_reading_and_loses_nothing(
        nursery: trio.Nursery) -> None:
    payload = os.urandom(24 << 20)
    go = trio.Event()
    digest: list[str] = []

    async def handler(stream: trio.SocketStream) -> None:
        await go.wait()  # not reading: the link must hold back, not buffer without bound
        digest.append(hashlib.sha256(await _read_all(stream)).hexdigest())

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    # A small receive buffer, so the stalled receiver's kernel cannot hide the bytes.
    listeners[0].socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    nursery.start_soon(trio.serve_listeners, handler, listeners)
    port = listeners[0].socket.getsockname()[1]
    shape = Shape(delay_ms=10, rate_mbit=400, queue_kib=64)  # holds 500 KiB + 64 KiB
    with trio.fail_after(60):
        async with open_link(("127.0.0.1", port), shape) as link:
            client = await trio.open_tcp_stream("127.0.0.1", link.port)

            async def send() -> None:
                await client.send_all(payload)
                await client.send_eof()

            nursery.start_soon(send)
            peak = 0
            for _ in range(30):
                await trio.sleep(0.02)
                peak = max(peak, link.buffered)
            assert 0 < peak <= 50_000 * 10 + 64 * 1024 + READ
            go.set()
            while not digest:
                await trio.sleep(0.02)
            await client.aclose()
    assert digest == [hashlib.sha256(payload).hexdigest()]


async def test_jitter_never_reorders(nursery: trio.Nursery) -> None:
    received = bytearray()

    async def handler(stream: trio.SocketStream) -> None:
        received.extend(await _read_all(stream))

    port = await _server(nursery, handler)
    sent = b"".join(b"%05d;" % i for i in range(200))
    with trio.fail_after(20):
        async with open_link(("127.0.0.1", port), Shape(delay_ms=1, jitter_ms=30)) as link:
            client = await trio.open_tcp_stream("127.0.0.1", link.port)
            for i in range(200):  # separate small writes: separate chunks, separate jitter
                await client.send_all(sent[i * 6:(i + 1) * 6])
                if i % 10 == 0:
                    await trio.sleep(0.002)
            await client.send_eof()
            while len(received) < len(sent):
                await trio.sleep(0.01)
            await client.aclose()
    assert bytes(received) == sent


async def test_changing_the_shape_mid_stream_keeps_order(nursery: trio.Nursery) -> None:
    received = bytearray()

    async def handler(stream: trio.SocketStream) -> None:
        received.extend(await _read_all(stream))

    port = await _server(nursery, handler)
    with trio.fail_after(10):
        async with open_link(("127.0.0.1", port), Shape(delay_ms=100)) as link:
            client = await trio.open_tcp_stream("127.0.0.1", link.port)
            await client.send_all(b"first;")
            await trio.sleep(0.01)
            link.shape = Shape(delay_ms=0)  # later bytes are due earlier: must still wait
            await client.send_all(b"second;")
            await client.send_eof()
            while len(received) < 13:
                await trio.sleep(0.01)
            await client.aclose()
    assert bytes(received) == b"first;second;"


async def test_a_refused_target_closes_the_client() -> None:
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # bound, never listening: connections are refused
        with trio.fail_after(10):
            async with open_link(("127.0.0.1", dead)) as link:
                client = await trio.open_tcp_stream("127.0.0.1", link.port)
                with contextlib.suppress(trio.BrokenResourceError):
                    assert await client.receive_some(10) == b""
                await client.aclose()


def test_shape_and_hostport_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        Shape(delay_ms=-1)
    with pytest.raises(ValueError, match="queue_kib"):
        Shape(queue_kib=0)
    assert parse_hostport("[::1]:80") == ("::1", 80)
    for bad in ("nohost", ":80", "h:x", "h:70000"):
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            parse_hostport(bad)


async def test_command_line_link_with_control(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(1024):
            await stream.send_all(data)

    port = await _server(nursery, handler)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bench", "link", "--target", f"127.0.0.1:{port}",
         "--delay-ms", "1", "--control"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None
    assert proc.stdout is not None
    buf = b""

    async def line() -> str:
        nonlocal buf
        assert proc.stdout is not None
        while b"\n" not in buf:
            data = await proc.stdout.receive_some(1024)
            assert data, "the link exited"
            buf += data
        out, buf = buf.split(b"\n", 1)
        return out.decode()

    try:
        with trio.fail_after(30):
            first = await line()
            assert first.startswith("listening on 127.0.0.1:")
            link_port = int(first.rsplit(":", 1)[1])
            await proc.stdin.send_all(b"set delay-ms=40 rate-mbit=100\n")
            assert await line() == "ok"
            await proc.stdin.send_all(b"set bogus=1\n")
            assert (await line()).startswith("error unknown setting")
            client = await trio.open_tcp_stream("127.0.0.1", link_port)
            t0 = trio.current_time()
            await client.send_all(b"ping")
            assert await client.receive_some(10) == b"ping"
            assert trio.current_time() - t0 >= 0.080
            await client.aclose()
            await proc.stdin.send_all(b"stats\n")
            stats = await line()
            assert stats.startswith("connections=1 forward=4 back=4"), stats
            await proc.stdin.aclose()  # EOF on stdin ends the link
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("flags", [["--target", "nope"], ["--target", "h:1", "--delay-ms", "-5"],
                                   ["--target", "h:1", "--listen", "x"]])
def test_command_line_rejects_bad_flags(flags: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "link", *flags],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
