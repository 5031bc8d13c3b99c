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
from tunnel.endpoint import Endpoint
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
async def test_lossy_streams_arrive_intact(loss: float, autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(loss=loss, duplicate=loss / 2, reorder=loss, seed=11)
    rng = random.Random(5)
    payloads = [rng.randbytes(1 << 20) for _ in range(3)]
    received: dict[str, str] = {}

    async def sink(peer: bytes, service: str, stream: TunnelStream) -> None:
        h = hashlib.sha256()
        while data := await stream.receive_some():
            h.update(data)
        received[service] = h.hexdigest()
        await stream.aclose()

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
