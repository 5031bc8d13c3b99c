"""RelayNode in process: mesh over WebSocket (force_websockets), mesh_link for
siblings found later, config validation."""

from __future__ import annotations

import pytest
import trio

from derp.client import DerpClient, Packet
from derp.keys import generate_private_key
from relay.node import RelayConfig, RelayNode

MESH_KEY = bytes(range(32))


async def expect(client: DerpClient, data: bytes) -> None:
    for _ in range(100):
        event = await client.receive()
        if isinstance(event, Packet) and event.data == data:
            return
    raise AssertionError(f"{data!r} did not arrive")


async def send_until(src: DerpClient, dst: DerpClient, data: bytes) -> None:
    while True:
        await src.send(dst.public_key, data)
        with trio.move_on_after(0.1):
            await expect(dst, data)
            return


@pytest.mark.parametrize("force_websockets", [False, True])
async def test_mesh_links_started_later(force_websockets: bool) -> None:
    cfg = {"listen": "127.0.0.1:0", "mesh_key": MESH_KEY, "force_websockets": force_websockets}
    a = RelayNode(RelayConfig(**cfg))  # type: ignore[arg-type]
    b = RelayNode(RelayConfig(**cfg))  # type: ignore[arg-type]
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            url_a = await nursery.start(a.serve)
            url_b = await nursery.start(b.serve)
            nursery.start_soon(a.mesh_link, url_b)
            nursery.start_soon(b.mesh_link, url_a)
            ca = DerpClient(url_a, generate_private_key())
            cb = DerpClient(url_b, generate_private_key())
            await nursery.start(ca.run)
            await nursery.start(cb.run)
            await send_until(ca, cb, b"a to b")
            await send_until(cb, ca, b"b to a")
            assert b.derp_server.has_remote(ca.public_key)
            assert a.derp_server.has_remote(cb.public_key)
            want = "websocket" if force_websockets else "derp"
            assert a.mesh_transports == {url_b: want}
            assert b.mesh_transports == {url_a: want}
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        ({"listen": "nope"}, "host:port"),
        ({"tls_cert": "/x"}, "together"),
        ({"mesh_with": ["http://x"]}, "mesh key"),
        ({"mesh_key": b"short"}, "32 bytes"),
        ({"mesh_key": MESH_KEY, "mesh_with": ["ftp://x"]}, "scheme"),
    ],
)
def test_config_validation(cfg: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        RelayNode(RelayConfig(**cfg))  # type: ignore[arg-type]
