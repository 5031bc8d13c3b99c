"""DerpClient against a real relay node on loopback: DERP and WebSocket transports,
reconnects, drops while disconnected, ping."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from derp.client import Connected, DerpClient, Packet, PeerGone
from derp.errors import DerpConnectionClosed
from derp.frames import PeerGoneReason
from derp.keys import generate_private_key
from relay.node import RelayConfig, RelayNode


@pytest.fixture
async def relay() -> AsyncIterator[RelayNode]:
    node = RelayNode(RelayConfig(listen="127.0.0.1:0"))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        yield node
        nursery.cancel_scope.cancel()


async def next_packet(client: DerpClient) -> Packet:
    for _ in range(100):
        event = await client.receive()
        if isinstance(event, Packet):
            return event
    raise AssertionError("no packet in 100 events")


@pytest.mark.parametrize("force_websocket", [False, True])
async def test_two_clients_exchange_packets(relay: RelayNode, force_websocket: bool) -> None:
    assert relay.url is not None
    a = DerpClient(relay.url, generate_private_key(), force_websocket=force_websocket)
    b = DerpClient(relay.url, generate_private_key(), force_websocket=force_websocket)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            want = "websocket" if force_websocket else "derp"
            assert a.transport == want
            assert b.transport == want
            event = await a.receive()
            assert isinstance(event, Connected)
            assert event.transport == want
            assert event.server_key == relay.derp_server.public_key
            payloads = [bytes([i % 256]) * (1 + i * 997 % 65536) for i in range(200)]
            for p in payloads:
                await a.send(b.public_key, p)
            got = [await next_packet(b) for _ in payloads]
            assert [g.data for g in got] == payloads
            assert all(g.src == a.public_key for g in got)
            await b.send(a.public_key, b"back")
            assert (await next_packet(a)).data == b"back"
            rtt = await a.ping()
            assert 0 < rtt < 5
            assert a.packets_sent == 200
            stats = a.stats()
            assert stats["packets_sent"] == 200
            assert stats["connected"] == 1
            assert b.stats()["packets_received"] == 200
            nursery.cancel_scope.cancel()


async def test_peer_gone_for_missing_peer(relay: RelayNode) -> None:
    assert relay.url is not None
    a = DerpClient(relay.url, generate_private_key())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await a.send(b"\x07" * 32, b"hello?")
            for _ in range(10):
                event = await a.receive()
                if isinstance(event, PeerGone):
                    break
            assert isinstance(event, PeerGone)
            assert event.key == b"\x07" * 32
            assert event.reason == PeerGoneReason.NOT_HERE
            nursery.cancel_scope.cancel()


async def test_send_while_disconnected_drops_and_counts() -> None:
    a = DerpClient("http://127.0.0.1:9", generate_private_key())
    with trio.fail_after(2):
        await a.send(b"\x01" * 32, b"x")
    assert a.dropped_disconnected == 1
    assert not a.connected
    with pytest.raises(DerpConnectionClosed):
        await a.ping()
    with pytest.raises(ValueError, match="dst"):
        await a.send(b"short", b"x")


async def test_reconnects_after_relay_restart() -> None:
    node = RelayNode(RelayConfig(listen="127.0.0.1:0"))
    with trio.fail_after(20):
        async with trio.open_nursery() as outer:
            scope = trio.CancelScope()

            async def run_node(
                n: RelayNode, s: trio.CancelScope,
                task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                with s:
                    await n.serve(task_status=task_status)

            url = await outer.start(run_node, node, scope)
            a = DerpClient(url, generate_private_key(), max_backoff=0.2)
            await outer.start(a.run)
            assert isinstance(await a.receive(), Connected)
            scope.cancel()
            for _ in range(200):
                if not a.connected:
                    break
                await trio.sleep(0.01)
            assert not a.connected
            again = RelayNode(RelayConfig(listen=url.removeprefix("http://")))
            await outer.start(run_node, again, trio.CancelScope())
            event = await a.receive()
            assert isinstance(event, Connected)
            assert event.server_key == again.derp_server.public_key
            assert a.connects == 2
            outer.cancel_scope.cancel()


async def test_restarting_relay_is_redialed_steadily_not_backed_off() -> None:
    node = RelayNode(RelayConfig(listen="127.0.0.1:0"))
    # With these backoffs a client that merely backs off would wait >= 5 s
    # after its first failed redial; the Restarting frame makes it retry
    # every 50 ms instead.
    with trio.fail_after(20):
        async with trio.open_nursery() as outer:
            scope = trio.CancelScope()

            async def run_node(
                n: RelayNode, s: trio.CancelScope,
                task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                with s:
                    await n.serve(task_status=task_status)

            url = await outer.start(run_node, node, scope)
            a = DerpClient(url, generate_private_key(), min_backoff=10, max_backoff=10)
            await outer.start(a.run)
            assert isinstance(await a.receive(), Connected)
            await node.drain(reconnect_in=0.05, try_for=30, grace=0.5)
            scope.cancel()
            for _ in range(300):
                if a.dial_failures >= 3:
                    break
                await trio.sleep(0.01)
            assert a.dial_failures >= 3
            again = RelayNode(RelayConfig(listen=url.removeprefix("http://")))
            await outer.start(run_node, again, trio.CancelScope())
            with trio.fail_after(4):
                event = await a.receive()
            assert isinstance(event, Connected)
            assert event.server_key == again.derp_server.public_key
            outer.cancel_scope.cancel()


async def test_silent_relay_counts_as_dead_and_is_redialed(relay: RelayNode) -> None:
    assert relay.url is not None
    # The relay sends KeepAlives only every ~60 s, so with dead_after=0.3 the
    # client sees silence, drops the connection and dials again.
    a = DerpClient(relay.url, generate_private_key(), dead_after=0.3, min_backoff=0.01)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            for _ in range(2):
                event = await a.receive()
                assert isinstance(event, Connected)
            assert a.connects == 2
            nursery.cancel_scope.cancel()


class FreezingStream(trio.abc.Stream):
    """Passes bytes through until ``freeze`` is set, then never reads again."""

    def __init__(self, inner: trio.abc.Stream, freeze: trio.Event) -> None:
        self.inner = inner
        self.freeze = freeze

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.freeze.is_set():
            await trio.sleep_forever()
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_relay_that_stops_reading_is_abandoned_after_write_timeout() -> None:
    from derp.server import DerpServer
    from web.frontdoor import FrontDoor
    from web.http import Request, Response, Upgrade
    from web.listener import serve_http

    server = DerpServer(generate_private_key())
    freeze = trio.Event()
    first = [True]

    async def derp(request: Request, upgrade: Upgrade) -> Response | None:
        stream = await upgrade.accept_raw([], "DERP")
        if first[0]:
            first[0] = False
            stream = FreezingStream(stream, freeze)
        await server.serve(stream)
        return None

    door = FrontDoor()
    door.mount("/derp", derp)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_http, door, "127.0.0.1:0")
            a = DerpClient(url, generate_private_key(), write_timeout=0.5, min_backoff=0.01)
            await nursery.start(a.run)
            freeze.set()
            data = bytes(65536)
            for _ in range(400):  # far more than the socket buffers hold
                await a.send(a.public_key, data)
                if a.connects >= 2:
                    break
            for _ in range(500):
                if a.connects >= 2:
                    break
                await trio.sleep(0.01)
            assert a.connects == 2
            assert a.dropped_disconnected > 0
            nursery.cancel_scope.cancel()


async def test_packet_handler_takes_packets_from_the_reader(relay: RelayNode) -> None:
    assert relay.url is not None
    a = DerpClient(relay.url, generate_private_key())
    b = DerpClient(relay.url, generate_private_key())
    got: list[tuple[bytes, bytes]] = []

    def handler(src: bytes, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("handler bug")
        got.append((src, data))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            b.set_packet_handler(handler)
            payloads = [bytes([i % 256]) * (1 + i * 997 % 65536) for i in range(100)]
            for p in payloads[:50]:
                await a.send(b.public_key, p)
            await a.send(b.public_key, b"boom")  # logged and dropped; the reader lives on
            for p in payloads[50:]:
                await a.send(b.public_key, p)
            for _ in range(1000):
                if len(got) == len(payloads):
                    break
                await trio.sleep(0.01)
            assert [d for _, d in got] == payloads
            assert all(s == a.public_key for s, _ in got)
            assert b.packets_received == len(payloads) + 1
            # None restores delivery through receive().
            b.set_packet_handler(None)
            await a.send(b.public_key, b"via receive")
            assert (await next_packet(b)).data == b"via receive"
            nursery.cancel_scope.cancel()


async def test_send_order_kept_when_the_socket_fills() -> None:
    """Sends written straight to the socket and sends queued behind a partial
    write (the relay reads slowly: rate limit) arrive complete and in order."""
    from derp.server import DerpServer
    from web.frontdoor import FrontDoor
    from web.http import Request, Response, Upgrade
    from web.listener import serve_http

    server = DerpServer(generate_private_key(), rate_limit=16 << 20, rate_burst=1 << 20)

    async def derp(request: Request, upgrade: Upgrade) -> Response | None:
        await server.serve(await upgrade.accept_raw([], "DERP"))
        return None

    door = FrontDoor()
    door.mount("/derp", derp)
    count = 320  # ~20 MiB: more than the loopback socket buffers hold
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_http, door, "127.0.0.1:0")
            a = DerpClient(url, generate_private_key())
            b = DerpClient(url, generate_private_key())
            await nursery.start(a.run)
            await nursery.start(b.run)

            async def sender() -> None:
                for i in range(count):
                    await a.send(b.public_key, i.to_bytes(4, "big") * 16383 + b"end!")

            nursery.start_soon(sender)
            for i in range(count):
                data = (await next_packet(b)).data
                assert len(data) == 65536
                assert data[:4] == i.to_bytes(4, "big")
                assert data[-8:] == i.to_bytes(4, "big") + b"end!"
            assert a.dropped_disconnected == 0
            nursery.cancel_scope.cancel()
