"""derp.dial on real loopback sockets: the DERP upgrade, and the WebSocket
fallback when forced, behind a proxy that refuses the upgrade, and against a
server that speaks only HTTP/2."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import trio

from derp.client import DerpClient, Packet
from derp.conn import DerpConn
from derp.dial import DialError, dial, parse_url
from derp.keys import generate_private_key
from relay.node import RelayConfig, RelayNode


@pytest.fixture
async def relay() -> AsyncIterator[RelayNode]:
    node = RelayNode(RelayConfig(listen="127.0.0.1:0"))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        yield node
        nursery.cancel_scope.cancel()


async def read_head(stream: trio.abc.Stream) -> bytes:
    head = b""
    for _ in range(1000):
        if b"\r\n\r\n" in head:
            return head
        data = await stream.receive_some(65536)
        if not data:
            break
        head += data
    return head


async def splice(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
    try:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(dst)


class BlockingProxy:
    """Answers any DERP upgrade with ``status``; passes everything else to the relay."""

    def __init__(self, relay_url: str, status: int = 403) -> None:
        self.target = parse_url(relay_url)
        self.status = status
        self.refused = 0
        self.passed = 0
        self.open: list[trio.abc.Stream] = []

    async def handle(self, client: trio.SocketStream) -> None:
        async with client:
            head = await read_head(client)
            if b"upgrade: derp" in head.lower():
                self.refused += 1
                await client.send_all(
                    f"HTTP/1.1 {self.status} Blocked\r\nContent-Length: 0\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                return
            self.passed += 1
            upstream = await trio.open_tcp_stream(self.target.host, self.target.port)
            self.open.append(upstream)
            async with upstream:
                await upstream.send_all(head)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(splice, client, upstream)
                    nursery.start_soon(splice, upstream, client)


async def start_server(nursery: trio.Nursery, handler: Any) -> str:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_dial_uses_the_derp_upgrade(relay: RelayNode) -> None:
    assert relay.url is not None
    with trio.fail_after(5):
        stream, transport = await dial(relay.url)
        assert transport == "derp"
        conn = await DerpConn.handshake(stream, generate_private_key())
        assert conn.server_key == relay.derp_server.public_key
        await conn.aclose()


async def test_forced_websocket(relay: RelayNode) -> None:
    assert relay.url is not None
    with trio.fail_after(5):
        stream, transport = await dial(relay.url + "/derp", force_websocket=True)
        assert transport == "websocket"
        conn = await DerpConn.handshake(stream, generate_private_key())
        assert conn.server_key == relay.derp_server.public_key
        await conn.aclose()


@pytest.mark.parametrize("status", [403, 426])
async def test_fallback_behind_a_proxy_that_blocks_the_upgrade(
    relay: RelayNode, status: int
) -> None:
    assert relay.url is not None
    proxy = BlockingProxy(relay.url, status)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            proxy_url = await start_server(nursery, proxy.handle)
            a = DerpClient(proxy_url, generate_private_key(), min_backoff=0.05)
            b = DerpClient(relay.url, generate_private_key())
            await nursery.start(a.run)
            await nursery.start(b.run)
            assert a.transport == "websocket"
            assert b.transport == "derp"
            assert proxy.refused == 1
            assert a.force_websocket  # it stays on WebSocket from now on
            for i in range(50):
                await a.send(b.public_key, b"ping %d" % i + bytes(i * 1000))
            for i in range(50):
                event = await b.receive()
                while not isinstance(event, Packet):
                    event = await b.receive()
                assert event.data == b"ping %d" % i + bytes(i * 1000)
            await b.send(a.public_key, b"pong")
            event = await a.receive()
            while not isinstance(event, Packet):
                event = await a.receive()
            assert event.data == b"pong"
            # after a reconnect it does not try the blocked upgrade again
            for stream in proxy.open:
                await trio.aclose_forcefully(stream)
            for _ in range(500):
                if a.connects >= 2:
                    break
                await trio.sleep(0.01)
            assert a.connects >= 2
            assert a.transport == "websocket"
            assert proxy.refused == 1
            nursery.cancel_scope.cancel()


async def test_5xx_on_upgrade_is_an_error_not_a_fallback(relay: RelayNode) -> None:
    assert relay.url is not None
    proxy = BlockingProxy(relay.url, 502)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            url = await start_server(nursery, proxy.handle)
            with pytest.raises(DialError, match="502"):
                await dial(url)
            assert proxy.passed == 0
            nursery.cancel_scope.cancel()


async def test_http2_only_server_triggers_the_websocket_attempt() -> None:
    requests: list[bytes] = []

    async def h2_only(stream: trio.SocketStream) -> None:
        async with stream:
            requests.append(await read_head(stream))
            # An HTTP/2 server's opening SETTINGS frame, then GOAWAY: no HTTP/1.1 here.
            await stream.send_all(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                                  b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + bytes(8))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            url = await start_server(nursery, h2_only)
            with pytest.raises(DialError, match="HTTP/2"):
                await dial(url)
            assert len(requests) == 2
            assert b"upgrade: derp" in requests[0].lower()
            assert b"upgrade: websocket" in requests[1].lower()
            nursery.cancel_scope.cancel()


async def test_dial_errors_are_typed() -> None:
    with pytest.raises(DialError, match="scheme"):
        await dial("ftp://x/derp")
    with trio.fail_after(5), pytest.raises(DialError, match="reach"):
        await dial("http://127.0.0.1:1")

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            url = await start_server(nursery, silent)
            with pytest.raises(DialError, match="timed out"):
                await dial(url, timeout=0.2)
            nursery.cancel_scope.cancel()


def test_parse_url_defaults() -> None:
    u = parse_url("https://relay.example")
    assert (u.tls, u.host, u.port, u.path, u.host_header) == (
        True, "relay.example", 443, "/derp", "relay.example")
    u = parse_url("http://[::1]:8080/custom")
    assert (u.host, u.port, u.path, u.host_header) == ("::1", 8080, "/custom", "[::1]:8080")

