"""Service names and the tcp:<port> forward, over in-memory tunnel-like streams."""

from __future__ import annotations

import hashlib
import os
import socket
from functools import partial

import pytest
import trio
import trio.testing

from agent.services import (
    ForwardError,
    ServiceNameError,
    ServiceRouter,
    SSHService,
    TCPService,
    forward_to_local_port,
    parse_service,
)
from agent.stats import ConnStats


@pytest.mark.parametrize(
    ("name", "service"),
    [
        ("ssh", SSHService()),
        ("tcp:1", TCPService(1)),
        ("tcp:65535", TCPService(65535)),
        ("tcp:db.internal:5432", TCPService(5432, "db.internal")),
        ("tcp:10.0.0.7:80", TCPService(80, "10.0.0.7")),
        ("tcp:[::1]:8080", TCPService(8080, "::1")),
    ],
)
def test_parse_good_names(name: str, service: object) -> None:
    assert parse_service(name) == service


@pytest.mark.parametrize(
    "name",
    ["", "SSH", "ssh ", "tcp", "tcp:", "tcp:0", "tcp:65536", "tcp:080", "tcp:-1", "tcp:+80",
     "tcp:8O", "tcp:\u0661\u0662", "udp:53", "tcp::80", "tcp:a..b:80", "tcp:-a:80",
     "tcp:a b:80", "tcp:[]:80", "tcp:[zz]:80", "tcp:h\nProxyCommand:80", "x" * 10_000],
)
def test_parse_bad_names(name: str) -> None:
    with pytest.raises(ServiceNameError) as info:
        parse_service(name)
    assert len(str(info.value)) < 200


async def echo_server(nursery: trio.Nursery) -> int:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)
                await stream.send_eof()
            except trio.BrokenResourceError:
                pass

    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def test_tcp_forward_round_trip_with_half_close(nursery: trio.Nursery) -> None:
    port = await echo_server(nursery)
    client, agent_side = trio.testing.memory_stream_pair()
    stats = ConnStats()
    router = ServiceRouter(None, tcp_stats=stats)
    data = os.urandom(3 * 1024 * 1024 + 5)
    received = bytearray()

    async def send() -> None:
        for i in range(0, len(data), 100_000):
            await client.send_all(data[i : i + 100_000])
        await client.send_eof()

    async def receive() -> None:
        while chunk := await client.receive_some(65536):
            received.extend(chunk)

    with trio.fail_after(20):
        async with trio.open_nursery() as inner:
            inner.start_soon(router.handle, f"tcp:{port}", agent_side)
            inner.start_soon(send)
            inner.start_soon(receive)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    snap = stats.snapshot()
    assert snap.bytes_in == len(data)
    assert snap.bytes_out == len(data)
    assert (snap.sessions_total, snap.sessions_open) == (1, 0)


async def test_forward_to_closed_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        _client, agent_side = trio.testing.memory_stream_pair()
        with trio.fail_after(10), pytest.raises(ForwardError, match=f"127.0.0.1:{port}"):
            await forward_to_local_port(agent_side, port)
    with pytest.raises(trio.ClosedResourceError):
        await agent_side.send_all(b"x")


async def test_router_refuses_unknown_and_disabled_services() -> None:
    router = ServiceRouter(None, allow_tcp=False)
    for name in ("ssh", "tcp:80", "bogus"):
        _client, agent_side = trio.testing.memory_stream_pair()
        with pytest.raises(ServiceNameError):
            await router.handle(name, agent_side)
        with pytest.raises(trio.ClosedResourceError):
            await agent_side.send_all(b"x")


async def test_router_hands_ssh_streams_to_the_ssh_handler() -> None:
    seen: list[trio.abc.Stream] = []

    async def ssh(stream: trio.abc.Stream) -> None:
        seen.append(stream)

    _client, agent_side = trio.testing.memory_stream_pair()
    await ServiceRouter(ssh).handle("ssh", agent_side)
    assert seen == [agent_side]


async def test_peer_vanishing_mid_forward_ends_quietly(nursery: trio.Nursery) -> None:
    port = await echo_server(nursery)
    client, agent_side = trio.testing.memory_stream_pair()

    async def vanish() -> None:
        await client.send_all(b"hello")
        assert await client.receive_some(5) == b"hello"
        await client.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as inner:
            inner.start_soon(forward_to_local_port, agent_side, port)
            inner.start_soon(vanish)


async def test_tunnel_handler_never_raises_and_counts_refusals() -> None:
    router = ServiceRouter(None)
    assert router.allow(b"k" * 32, "tcp:80") is True
    assert router.allow(b"k" * 32, "ssh") == "ssh is disabled on this agent"
    assert "unknown service" in str(router.allow(b"k" * 32, "nope"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        for name in ("nope", f"tcp:{port}"):
            _client, agent_side = trio.testing.memory_stream_pair()
            with trio.fail_after(10):
                await router.handle_tunnel_stream(b"k" * 32, name, agent_side)
    assert router.refusals == {"ServiceNameError": 1, "ForwardError": 1}
