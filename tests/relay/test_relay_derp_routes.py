"""The /derp routes on a real RelayNode: 426 without an upgrade, the probe
endpoints, the 101 headers, WebSocket without the derp subprotocol, and TLS."""

from __future__ import annotations

import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from derp.client import DerpClient, Packet
from derp.keys import generate_private_key, key_to_hex
from relay.node import RelayConfig, RelayNode
from web.listener import parse_listen

sys.path.insert(0, str(Path(__file__).parent))
from relay_procs import make_cert


@pytest.fixture
async def relay() -> AsyncIterator[RelayNode]:
    node = RelayNode(RelayConfig(listen="127.0.0.1:0"))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        yield node
        nursery.cancel_scope.cancel()


async def request(url: str, raw: bytes) -> bytes:
    host, port = parse_listen(url.split("//", 1)[1])
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(raw)
            out = b""
            while b"\r\n\r\n" not in out:
                data = await stream.receive_some()
                if not data:
                    break
                out += data
            return out


async def test_derp_without_upgrade_is_426(relay: RelayNode) -> None:
    assert relay.url is not None
    out = await request(relay.url, b"GET /derp HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 426 ")
    assert b"application/json" in out


@pytest.mark.parametrize("path", [b"/derp/probe", b"/derp/latency-check"])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
async def test_probes_answer_200(relay: RelayNode, path: bytes, method: bytes) -> None:
    assert relay.url is not None
    out = await request(relay.url, method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ")


async def test_upgrade_answers_101_with_derp_headers(relay: RelayNode) -> None:
    assert relay.url is not None
    out = await request(relay.url, b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\n"
                                   b"Connection: Upgrade\r\n\r\n")
    head = out.split(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("http/1.1 101 ")
    assert "upgrade: derp" in head
    assert "derp-version: 2" in head
    assert f"derp-public-key: {key_to_hex(relay.derp_server.public_key)}" in head
    # the ServerKey frame follows at once
    assert out.split(b"\r\n\r\n", 1)[1][:1] in (b"", b"\x01")


async def test_websocket_without_derp_subprotocol_is_400(relay: RelayNode) -> None:
    assert relay.url is not None
    out = await request(relay.url, b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                                   b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize("force_websocket", [False, True])
async def test_tls_relay(tmp_path: Path, force_websocket: bool) -> None:
    cert, key = make_cert(tmp_path)
    node = RelayNode(RelayConfig(listen="127.0.0.1:0", tls_cert=cert, tls_key=key))
    ctx = ssl.create_default_context(cafile=cert)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(node.serve)
            assert url.startswith("https://127.0.0.1:")
            a = DerpClient(url, generate_private_key(), ssl_context=ctx,
                           force_websocket=force_websocket)
            b = DerpClient(url, generate_private_key(), ssl_context=ctx)
            await nursery.start(a.run)
            await nursery.start(b.run)
            await a.send(b.public_key, b"over tls")
            event = await b.receive()
            while not isinstance(event, Packet):
                event = await b.receive()
            assert event.data == b"over tls"
            nursery.cancel_scope.cancel()


async def test_tls_alpn_h2_only_server_is_detected(tmp_path: Path) -> None:
    from functools import partial

    from derp.dial import DialError, dial

    cert, key = make_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server_ctx.set_alpn_protocols(["h2"])
    handshakes: list[str | None] = []

    async def h2_only(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.do_handshake()
            handshakes.append(stream.selected_alpn_protocol())
            await stream.receive_some()
        except trio.BrokenResourceError:
            pass

    client_ctx = ssl.create_default_context(cafile=cert)
    client_ctx.set_alpn_protocols(["h2", "http/1.1"])
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, lambda s: h2_only(
                trio.SSLStream(s, server_ctx, server_side=True)), 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(DialError, match="HTTP/2"):
                await dial(f"https://127.0.0.1:{port}", ssl_context=client_ctx)
            # the DERP upgrade was abandoned, then the WebSocket attempt too
            assert handshakes == ["h2", "h2"]
            nursery.cancel_scope.cancel()
