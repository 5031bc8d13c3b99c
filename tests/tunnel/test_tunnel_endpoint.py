"""Two endpoints over an in-memory (optionally lossy) network."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from tunnel.connection import Config
from tunnel.endpoint import Endpoint, Handler
from tunnel.handshake import generate_private_key
from tunnel.mempath import MemoryNetwork
from tunnel.stream import TunnelStream


@asynccontextmanager
async def pair(
    net: MemoryNetwork, config: Config | None = None, **kw: object
) -> AsyncIterator[tuple[Endpoint, Endpoint]]:
    ka, kb = generate_private_key(), generate_private_key()
    a = Endpoint(ka, config=config, **kw)  # type: ignore[arg-type]
    b = Endpoint(kb, config=config, **kw)  # type: ignore[arg-type]
    a.add_relay(net.attach(a.public_key))
    b.add_relay(net.attach(b.public_key))
    a.set_peer(b.public_key)
    b.set_peer(a.public_key)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        yield a, b
        nursery.cancel_scope.cancel()


async def echo_server(ep: Endpoint) -> None:
    async def handler(peer: bytes, service: str, stream: TunnelStream) -> None:
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data)
            await stream.send_eof()

    await ep.serve(handler)


def hashing_sink(results: dict[str, str]) -> Handler:
    """A serve() handler that reads each stream to its end and records its SHA-256 by service."""

    async def sink(peer: bytes, service: str, stream: TunnelStream) -> None:
        h = hashlib.sha256()
        while data := await stream.receive_some():
            h.update(data)
        results[service] = h.hexdigest()
        await stream.aclose()

    return sink


async def test_open_echo_close() -> None:
    net = MemoryNetwork()
    async with pair(net) as (a, b), trio.open_nursery() as nursery:
        nursery.start_soon(echo_server, b)
        with trio.fail_after(5):
            s = await a.open_stream(b.public_key, "tcp:22")
            await s.send_all(b"hello")
            assert await s.receive_some() == b"hello"
            await s.send_eof()
            assert await s.receive_some() == b""
            await s.aclose()
            rtt = await a.ping(b.public_key)
            assert rtt >= 0
            assert a.path_of(b.public_key) == "relay"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("loss", [0.0, 0.01, 0.05, 0.10])
async def test_lossy_streams_arrive_intact(
    loss: float, autojump_clock: trio.testing.MockClock
) -> None:
    net = MemoryNetwork(loss=loss, duplicate=loss / 2, reorder=loss, seed=11)
    rng = random.Random(5)
    payloads = [rng.randbytes(1 << 20) for _ in range(3)]
    received: dict[str, str] = {}

    sink = hashing_sink(received)

    async def source(ep: Endpoint, peer: bytes, i: int) -> None:
        s = await ep.open_stream(peer, f"tcp:{i}")
        view = memoryview(payloads[i])
        for off in range(0, len(view), 100_000):
            await s.send_all(view[off : off + 100_000])
        await s.send_eof()
        assert await s.receive_some() == b""
        await s.aclose()

    # Small packets so that even 1% loss hits hundreds of packets.
    async with pair(net, Config(max_packet=8192)) as (a, b), trio.open_nursery() as nursery:
        nursery.start_soon(b.serve, sink)
        with trio.fail_after(120):
            async with trio.open_nursery() as senders:
                for i in range(3):
                    senders.start_soon(source, a, b.public_key, i)
        nursery.cancel_scope.cancel()
    for i, p in enumerate(payloads):
        assert received[f"tcp:{i}"] == hashlib.sha256(p).hexdigest()
    if loss:
        assert net.counts["dropped"] > 0
        assert net.counts["reordered"] > 0


async def _stream_pair(a: Endpoint, b: Endpoint) -> tuple[TunnelStream, TunnelStream]:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            got: list[TunnelStream] = []

            async def acc() -> None:
                _, service, stream = await b.accept()
                assert service == "test"
                got.append(stream)

            nursery.start_soon(acc)
            s = await a.open_stream(b.public_key, "test")
    return s, got[0]


async def test_tunnel_stream_is_a_half_closeable_stream() -> None:
    net = MemoryNetwork()
    small = Config(stream_window=8192, send_buffer=8192)
    async with pair(net) as (a, b), pair(MemoryNetwork(), small) as (c, d):

        async def maker() -> tuple[TunnelStream, TunnelStream]:
            return await _stream_pair(a, b)

        async def clogged() -> tuple[TunnelStream, TunnelStream]:
            s, r = await _stream_pair(c, d)
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(s.send_all, b"x" * 100_000)
                    nursery.start_soon(r.send_all, b"y" * 100_000)
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
            return s, r

        with trio.fail_after(60):
            await trio.testing.check_half_closeable_stream(maker, clogged)


async def test_stalled_reader_does_not_block_other_streams() -> None:
    net = MemoryNetwork()
    cfg = Config()
    async with pair(net, cfg) as (a, b):
        stalled_w, stalled_r = await _stream_pair(a, b)
        busy_w, busy_r = await _stream_pair(a, b)
        total = 4 * cfg.session_window  # far more than the session window
        blob = random.Random(1).randbytes(total)
        stalled_progress = 0

        async def fill_stalled() -> None:
            nonlocal stalled_progress
            for _ in range(100):
                await stalled_w.send_all(b"s" * 65536)
                stalled_progress += 65536

        async def pump() -> None:
            view = memoryview(blob)
            for off in range(0, total, 65536):
                await busy_w.send_all(view[off : off + 65536])
            await busy_w.send_eof()

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fill_stalled)
                await trio.testing.wait_all_tasks_blocked()
                # The stalled stream took its window and its send buffer, no more.
                assert 0 < stalled_progress <= cfg.stream_window + cfg.send_buffer + 65536
                nursery.start_soon(pump)
                h = hashlib.sha256()
                while data := await busy_r.receive_some():
                    h.update(data)
                assert h.digest() == hashlib.sha256(blob).digest()
                # the stalled stream is still stalled, and still works once read
                assert stalled_progress <= cfg.stream_window + cfg.send_buffer + 65536
                got = 0
                while got < 65536 * 100:
                    got += len(await stalled_r.receive_some())
        assert stalled_progress == 65536 * 100


async def test_dead_peer_times_out(autojump_clock: trio.testing.MockClock) -> None:
    from tunnel.errors import PeerTimeoutError

    net = MemoryNetwork()
    cfg = Config(keepalive=1.0, dead_timeout=6.0)
    async with pair(net, cfg) as (a, b):
        s, _r = await _stream_pair(a, b)
        net.up = False  # the peer vanishes: nothing gets through any more
        start = trio.current_time()
        with trio.fail_after(60), pytest.raises(trio.BrokenResourceError) as exc:
            await s.receive_some()
        assert isinstance(exc.value.__cause__, PeerTimeoutError)
        assert 6.0 <= trio.current_time() - start < 10.0
        with pytest.raises(PeerTimeoutError):
            await a.ping(b.public_key, timeout=3.0)


async def test_refused_and_unauthorised() -> None:
    from tunnel.errors import PeerTimeoutError, StreamRefusedError

    net = MemoryNetwork()
    async with pair(net, allow=lambda peer, service: service == "ssh" or "only ssh here") as (
        a,
        b,
    ):
        with trio.fail_after(5), pytest.raises(StreamRefusedError) as exc:
            await a.open_stream(b.public_key, "tcp:80")
        assert exc.value.reason == "only ssh here"
        with trio.fail_after(5):
            s = await a.open_stream(b.public_key, "ssh")
            await s.aclose()
        # a stranger (not set_peer'd, not authorised) gets no session at all
        stranger = Endpoint(generate_private_key(), handshake_timeout=2.0)
        stranger.add_relay(net.attach(stranger.public_key))
        async with trio.open_nursery() as nursery:
            await nursery.start(stranger.run)
            with trio.fail_after(10), pytest.raises(PeerTimeoutError):
                await stranger.open_stream(b.public_key, "ssh")
            nursery.cancel_scope.cancel()
        assert b.dropped["unauthorized_peer"] >= 1


async def test_rekeys_during_a_transfer() -> None:
    from tunnel.record import Limits

    net = MemoryNetwork(loss=0.02, reorder=0.02, seed=4)
    blob = random.Random(9).randbytes(4 << 20)
    results: dict[str, str] = {}

    sink = hashing_sink(results)

    limits = Limits(rekey_after_messages=40)
    async with pair(net, Config(max_packet=16384), limits=limits) as (a, b):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.serve, sink)
            with trio.fail_after(30):
                s = await a.open_stream(b.public_key, "blob")
                await s.send_all(blob)
                await s.send_eof()
                assert await s.receive_some() == b""
            nursery.cancel_scope.cancel()
        session = a.session(b.public_key)
        assert session is not None
        assert session.channel.handshakes >= 5
    assert results["blob"] == hashlib.sha256(blob).hexdigest()


async def test_peer_restart_fails_old_streams_fast_and_new_ones_work(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    kb = generate_private_key()
    a = Endpoint(generate_private_key())
    a.add_relay(net.attach(a.public_key))
    async with trio.open_nursery() as outer:
        await outer.start(a.run)
        b1 = Endpoint(kb)
        b1.add_relay(net.attach(b1.public_key))
        b1.set_peer(a.public_key)
        a.set_peer(b1.public_key)
        async with trio.open_nursery() as inner:
            await inner.start(b1.run)
            inner.start_soon(echo_server, b1)
            s = await a.open_stream(b1.public_key, "echo")
            await s.send_all(b"before")
            assert await s.receive_some() == b"before"
            inner.cancel_scope.cancel()  # b "crashes": no goodbye
        b2 = Endpoint(kb)  # same node key, new process
        b2.add_relay(net.attach(b2.public_key))
        b2.set_peer(a.public_key)
        await outer.start(b2.run)
        outer.start_soon(echo_server, b2)
        start = trio.current_time()
        await s.send_all(b"after")  # queued; the old peer state is gone
        with trio.fail_after(60), pytest.raises(trio.BrokenResourceError):
            await s.receive_some()
        # well before the 30 s dead-peer timeout
        assert trio.current_time() - start < 10
        with trio.fail_after(10):
            s2 = await a.open_stream(b2.public_key, "echo")
            await s2.send_all(b"again")
            assert await s2.receive_some() == b"again"
        outer.cancel_scope.cancel()


async def test_peer_moves_to_another_relay_mid_transfer() -> None:
    relay1, relay2 = MemoryNetwork(), MemoryNetwork()
    a = Endpoint(generate_private_key())
    b = Endpoint(generate_private_key())
    a.add_relay(relay1.attach(a.public_key))
    a.add_relay(relay2.attach(a.public_key), "relay2")
    b.add_relay(relay1.attach(b.public_key))
    a.set_peer(b.public_key)
    b.set_peer(a.public_key)
    blob = random.Random(8).randbytes(8 << 20)
    results: dict[str, str] = {}

    sink = hashing_sink(results)

    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        nursery.start_soon(b.serve, sink)
        with trio.fail_after(30):
            s = await a.open_stream(b.public_key, "blob")
            view = memoryview(blob)
            half = len(blob) // 2
            await s.send_all(view[:half])
            # b re-homes: relay1 forgets it, it is now reachable on relay2 only
            del relay1.paths[b.public_key]
            b.add_relay(relay2.attach(b.public_key))
            a.set_peer(b.public_key, relay_url="relay2")
            await s.send_all(view[half:])
            await s.send_eof()
            assert await s.receive_some() == b""
        nursery.cancel_scope.cancel()
    assert results["blob"] == hashlib.sha256(blob).hexdigest()
    assert relay2.counts["sent"] > 0


async def test_cancelled_open_resets_the_accepted_side() -> None:
    net = MemoryNetwork()
    async with pair(net) as (a, b):
        net.up = False  # the OPEN is delayed until after we give up
        with trio.move_on_after(0.05):
            await a.open_stream(b.public_key, "slow")
        net.up = True
        with trio.fail_after(10):
            _, service, stream = await b.accept()
            assert service == "slow"
            with pytest.raises(trio.BrokenResourceError):
                await stream.receive_some()


async def test_path_reset_storm_on_a_lossy_relay(autojump_clock: trio.testing.MockClock) -> None:
    """Relay reconnects over and over (each one resends everything in flight)
    while it also drops packets: the transfer still completes, intact."""

    class Stormy(MemoryNetwork):
        def _deliver(self, src: bytes, dst: bytes, data: bytes) -> None:
            super()._deliver(src, dst, data)
            if self.counts["sent"] % 25 == 0:
                self.reset()  # every 25th datagram, the relay "reconnects"

    net = Stormy(loss=0.05, reorder=0.05, duplicate=0.02, seed=21)
    blob = random.Random(10).randbytes(2 << 20)
    results: dict[str, str] = {}

    sink = hashing_sink(results)

    async with pair(net, Config(max_packet=8192)) as (a, b), trio.open_nursery() as nursery:
        nursery.start_soon(b.serve, sink)
        with trio.fail_after(120):
            s = await a.open_stream(b.public_key, "blob")
            await s.send_all(blob)
            await s.send_eof()
            assert await s.receive_some() == b""
        session = a.session(b.public_key)
        assert session is not None
        assert session.path_changes > 10
        nursery.cancel_scope.cancel()
    assert results["blob"] == hashlib.sha256(blob).hexdigest()
