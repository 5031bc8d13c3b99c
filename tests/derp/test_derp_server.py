"""DERP server core over real loopback TCP (and memory streams for timing tests).

Rules: 127.0.0.1 and port 0 only; ``trio.fail_after`` around network I/O;
every loop bounded in count and time.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from derp import frames as f
from derp import handshake as hs
from derp.conn import DerpConn
from derp.errors import DerpConnectionClosed
from derp.keys import generate_private_key, public_key
from derp.server import DerpServer
from tests.derp.derp_events import next_of, next_packet


@asynccontextmanager
async def tcp_server(**kwargs: object) -> AsyncIterator[tuple[DerpServer, int]]:
    server = DerpServer(generate_private_key(), **kwargs)  # type: ignore[arg-type]

    async def handler(stream: trio.SocketStream) -> None:
        await server.serve(stream, remote="test")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        yield server, port
        nursery.cancel_scope.cancel()


async def connect(port: int, key: bytes | None = None, **kwargs: object) -> DerpConn:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    return await DerpConn.handshake(stream, key or generate_private_key(), **kwargs)  # type: ignore[arg-type]


async def test_three_clients_exchange_packets() -> None:
    with trio.fail_after(10):
        async with tcp_server() as (server, port):
            conns = [await connect(port) for _ in range(3)]
            assert all(c.server_key == server.public_key for c in conns)
            assert all(c.server_info == {"version": 2} for c in conns)
            for c in conns:
                await c.send_packets(
                    [(o.public_key, b"from " + c.public_key) for o in conns if o is not c]
                )
            for c in conns:
                got = {(await next_packet(c)) for _ in range(2)}
                assert got == {
                    f.RecvPacket(o.public_key, b"from " + o.public_key) for o in conns if o is not c
                }
            snap = server.metrics.snapshot()
            assert snap["clients_connected"] == 3
            assert snap["packets_in"] == 6
            assert snap["packets_out"] == 6
            for c in conns:
                await c.aclose()


async def test_big_packets_and_bursts_arrive_in_order() -> None:
    with trio.fail_after(10):
        async with tcp_server() as (_, port):
            a, b = await connect(port), await connect(port)
            payloads = [bytes([i]) * (f.MAX_PACKET_SIZE - i) for i in range(40)]
            async with trio.open_nursery() as nursery:
                for p in payloads:
                    nursery.start_soon(a.send_packet, b.public_key, p)
                    await trio.sleep(0)
            got = [(await next_packet(b)).data for _ in payloads]
            assert sorted(got) == sorted(payloads)
            await a.send_packets([(b.public_key, p) for p in payloads])
            assert [(await next_packet(b)).data for _ in payloads] == payloads


async def test_peer_gone_not_here_and_disconnected() -> None:
    with trio.fail_after(10):
        async with tcp_server() as (server, port):
            a, b = await connect(port), await connect(port)
            nobody = public_key(generate_private_key())
            await a.send_packet(nobody, b"hello?")
            assert await next_of(a, f.PeerGone) == f.PeerGone(nobody, f.PeerGoneReason.NOT_HERE)
            assert server.metrics.drops["unknown_dest"] == 1
            await a.send_packet(b.public_key, b"hi")
            assert (await next_packet(b)).data == b"hi"
            await b.aclose()
            gone = await next_of(a, f.PeerGone)
            assert gone == f.PeerGone(b.public_key, f.PeerGoneReason.DISCONNECTED)


async def test_duplicate_key_newest_wins() -> None:
    with trio.fail_after(10):
        async with tcp_server() as (server, port):
            key = generate_private_key()
            a = await connect(port)
            b1 = await connect(port, key)
            b2 = await connect(port, key)
            with pytest.raises(DerpConnectionClosed):
                await next_packet(b1)
            await a.send_packet(b2.public_key, b"to the newest")
            assert (await next_packet(b2)).data == b"to the newest"
            assert server.metrics.duplicate_clients == 1
            assert server.metrics.clients_connected == 2


async def test_ping_pong_and_keepalive() -> None:
    with trio.fail_after(10):
        async with tcp_server(keepalive_interval=0.2) as (_, port):
            a = await connect(port)
            seen: list[object] = []

            async def loop() -> None:
                while True:
                    seen.append(await a.receive())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(loop)
                rtt = await a.ping()
                assert 0 < rtt < 5
                with trio.fail_after(3):
                    while not any(isinstance(e, f.KeepAlive) for e in seen):
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            assert any(isinstance(e, f.Pong) for e in seen)


async def test_restarting_on_graceful_close() -> None:
    with trio.fail_after(10):
        async with tcp_server() as (server, port):
            a = await connect(port)
            await server.close(restarting=True, reconnect_in=0.5, try_for=10)
            assert await next_of(a, f.Restarting) == f.Restarting(500, 10000)
            with pytest.raises(DerpConnectionClosed):
                await a.receive()
            with pytest.raises(DerpConnectionClosed):
                await connect(port)


async def _raw_handshake_start(port: int) -> tuple[trio.SocketStream, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    dec = f.FrameDecoder()
    while (frame := dec.next_frame()) is None:
        dec.feed(await stream.receive_some(4096))
    assert isinstance(frame, f.ServerKey)
    return stream, frame.key


async def _expect_eof(stream: trio.SocketStream) -> None:
    for _ in range(100):
        try:
            if not await stream.receive_some(65536):
                return
        except trio.BrokenResourceError:
            return
    raise AssertionError("server did not close")


@pytest.mark.parametrize("case", ["wrong_server_key", "garbage_box", "oversized", "not_info"])
async def test_bad_handshake_closes_only_that_connection(case: str) -> None:
    with trio.fail_after(10):
        async with tcp_server() as (server, port):
            a, b = await connect(port), await connect(port)
            stream, _ = await _raw_handshake_start(port)
            client = generate_private_key()
            if case == "wrong_server_key":
                other = public_key(generate_private_key())
                wire = f.encode(hs.build_client_info(client, other))
                reason = "bad_box"
            elif case == "garbage_box":
                wire = f.encode(f.ClientInfo(public_key(client), b"\0" * 24, b"junk" * 20))
                reason = "bad_box"
            elif case == "oversized":
                wire = f.frame_header(f.FrameType.CLIENT_INFO, 2 << 20) + b"\0" * 1000
                reason = "frame_too_large"
            else:
                wire = f.encode(f.SendPacket(a.public_key, b"no handshake"))
                reason = "expected_client_info"
            await stream.send_all(wire)
            await _expect_eof(stream)
            assert server.metrics.protocol_errors[reason] == 1
            await a.send_packet(b.public_key, b"still fine")
            assert (await next_packet(b)).data == b"still fine"
            assert server.metrics.clients_connected == 2


async def test_malformed_frame_after_handshake_closes_that_connection() -> None:
    with trio.fail_after(10):
        async with tcp_server() as (server, port):
            a, b = await connect(port), await connect(port)
            await a.send_raw(f.frame_header(f.FrameType.SEND_PACKET, 10) + b"0123456789")
            with pytest.raises(DerpConnectionClosed):
                await a.receive()
            assert server.metrics.protocol_errors["short_payload"] == 1
            c = await connect(port)
            await c.send_packet(b.public_key, b"ok")
            assert (await next_packet(b)).data == b"ok"


async def test_handshake_timeout() -> None:
    with trio.fail_after(10):
        async with tcp_server(handshake_timeout=0.3) as (server, port):
            stream, _ = await _raw_handshake_start(port)
            await _expect_eof(stream)
            assert server.metrics.protocol_errors["handshake_timeout"] == 1


async def test_frozen_receiver_does_not_slow_others() -> None:
    """The spirit of Tailscale's TestSendFreeze."""
    with trio.fail_after(30):
        async with tcp_server(queue_size=16, write_timeout=60) as (server, port):
            a, b = await connect(port), await connect(port)
            # The frozen client gets a tiny receive buffer and never reads.
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await sock.connect(("127.0.0.1", port))
            frozen = await DerpConn.handshake(trio.SocketStream(sock), generate_private_key())
            blob = b"z" * 32000
            stop = trio.Event()

            async def flood() -> None:
                # b floods the frozen client with ~64 MB, far beyond any buffer.
                for _ in range(2000):
                    if stop.is_set():
                        return
                    await b.send_packet(frozen.public_key, blob)

            async def b_echo() -> None:
                while True:
                    p = await next_packet(b)
                    await b.send_packet(p.src, p.data)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                nursery.start_soon(b_echo)
                # a <-> b ping-pong keeps flowing while the flood piles up.
                with trio.fail_after(15):
                    for i in range(300):
                        await a.send_packet(b.public_key, i.to_bytes(4, "big"))
                        assert (await next_packet(a)).data == i.to_bytes(4, "big")
                with trio.fail_after(15):
                    while server.metrics.drops["queue_full"] == 0:
                        await trio.sleep(0.05)
                stop.set()
                nursery.cancel_scope.cancel()
            assert server.has_client(frozen.public_key)
            await frozen.aclose()


async def test_replacing_a_frozen_receiver_counts_its_unwritten_packets() -> None:
    """What the replaced connection's writer had taken off the queue is lost:
    counted as ``duplicate_client``; what was still queued goes to the new one."""
    with trio.fail_after(20):
        async with tcp_server(queue_size=8, write_timeout=60) as (server, port):
            b = await connect(port)
            key = generate_private_key()
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await sock.connect(("127.0.0.1", port))
            frozen = await DerpConn.handshake(trio.SocketStream(sock), key)
            while server.metrics.drops["queue_full"] == 0:  # the writer is stuck
                await b.send_packet(frozen.public_key, b"y" * 60000)
                await trio.sleep(0.005)
            fresh = await connect(port, key)
            with trio.fail_after(5):
                while server.metrics.drops["duplicate_client"] == 0:
                    await trio.sleep(0.01)
            assert server.metrics.duplicate_clients == 1
            assert (await next_packet(fresh)).data == b"y" * 60000
            await frozen.aclose()
            await fresh.aclose()


async def test_write_timeout_disconnects_frozen_receiver() -> None:
    with trio.fail_after(20):
        async with tcp_server(queue_size=8, write_timeout=0.5) as (server, port):
            b = await connect(port)
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await sock.connect(("127.0.0.1", port))
            frozen = await DerpConn.handshake(trio.SocketStream(sock), generate_private_key())
            for _ in range(2000):
                if not server.has_client(frozen.public_key):
                    break
                await b.send_packet(frozen.public_key, b"y" * 60000)
                await trio.sleep(0.005)
            assert not server.has_client(frozen.public_key)
            assert server.metrics.closes["write_timeout"] == 1
            assert server.metrics.drops["write_error"] >= 1
            await frozen.aclose()


async def _memory_client(
    server: DerpServer, nursery: trio.Nursery, **kwargs: object
) -> DerpConn:
    client_end, server_end = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve, server_end)
    return await DerpConn.handshake(client_end, generate_private_key(), **kwargs)  # type: ignore[arg-type]


async def test_rate_limit_is_backpressure_not_drops(autojump_clock: trio.abc.Clock) -> None:
    mesh = bytes(range(32))
    server = DerpServer(generate_private_key(), rate_limit=100_000, mesh_key=mesh)
    async with trio.open_nursery() as nursery:
        a = await _memory_client(server, nursery)
        m = await _memory_client(server, nursery, mesh_key=mesh)
        b = await _memory_client(server, nursery)
        assert a.server_info is not None
        assert a.server_info["TokenBucketBytesPerSecond"] == 100_000
        assert m.server_info == {"version": 2}
        n, size = 20, 60_000
        start = trio.current_time()
        await a.send_packets([(b.public_key, b"a" * size)] * n)
        for _ in range(n):
            assert (await next_packet(b)).data == b"a" * size
        limited = trio.current_time() - start
        # 1.2 MB at 100 kB/s after a 256 KiB burst: at least ~9 s (virtual time).
        assert limited >= (n * size - (256 << 10)) / 100_000 * 0.9
        start = trio.current_time()
        await m.send_packets([(b.public_key, b"m" * size)] * n)
        for _ in range(n):
            assert (await next_packet(b)).data == b"m" * size
        assert trio.current_time() - start < 1  # mesh peers are exempt
        assert sum(server.metrics.drops.values()) == 0
        nursery.cancel_scope.cancel()


async def test_mesh_frames_need_the_mesh_key() -> None:
    with trio.fail_after(10):
        async with tcp_server(mesh_key=bytes(32)) as (server, port):
            a = await connect(port, mesh_key=bytes([1]) * 32)
            await a.watch_conns()
            with pytest.raises(DerpConnectionClosed):
                await a.receive()
            assert server.metrics.protocol_errors["mesh_forbidden"] == 1


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        DerpServer(b"short")
    with pytest.raises(ValueError, match="> 0"):
        DerpServer(generate_private_key(), queue_size=0)
