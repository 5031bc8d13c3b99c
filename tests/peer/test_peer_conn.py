"""peer.conn's home choice and node, without relays (the agent's tests run it whole,
tests/agent/test_agent_main_rehome.py re-homes it between two real relays)."""

from __future__ import annotations

import socket
from functools import partial

import pytest
import trio

from derp.keys import generate_private_key
from peer.conn import NoRegionError, PeerConn
from peer.relaymap import Region, RelayMap


async def _latency_ok(stream: trio.SocketStream) -> None:
    async with stream:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            data += chunk
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


async def test_choose_home_takes_a_region_that_answers_and_node_follows() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    pc = PeerConn(generate_private_key())
    assert pc.node() is None
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _latency_ok, 0,
                                                host="127.0.0.1"))
        live = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        relay_map = RelayMap((Region(1, url=f"http://127.0.0.1:{dead}"), Region(2, url=live),
                              Region(3, url=live, healthy=False)))
        with trio.fail_after(20):
            home = await pc.choose_home(relay_map, probes=2, timeout=2)
        nursery.cancel_scope.cancel()
    assert home.region_id == 2
    assert set(pc.latency_ms) == {2}  # the unhealthy region is not even probed
    pc.home, pc.direct = home, ("10.0.0.1", 4242)
    node = pc.node()
    assert node is not None
    assert node.key == pc.public_key
    assert node.home_region == 2
    assert node.endpoints == (("10.0.0.1", 4242),)
    assert set(node.region_latency_ms) == {"2"}


async def test_no_usable_region() -> None:
    pc = PeerConn(generate_private_key())
    with pytest.raises(NoRegionError):
        await pc.choose_home(RelayMap((Region(1, url="http://x", healthy=False),)))
