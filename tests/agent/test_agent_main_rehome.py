"""The agent re-homes when its relay dies, and an open stream survives it.

Two real ``burrow relay`` processes are the relay map's regions.  A small
coderd stand-in (the project's own front door on 127.0.0.1:0) serves the
manifest and the coordinator WebSocket, recording the nodes the agent
publishes and naming the test's client key to it.  The test is the client:
a tunnel endpoint with a DERP path to each relay, following the agent's home
region as the coordinator reports it, echoing bytes through ``tcp:<port>``
while the agent's home relay is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from agent.run import Agent, AgentOptions
from derp.client import DerpClient
from derp.keys import generate_private_key
from tests.relay.relay_procs import RelayProcess
from tunnel.derp_path import DerpPath
from tunnel.endpoint import Endpoint
from tunnel.handshake import public_key
from web.frontdoor import FrontDoor
from web.http import Request, Response, Upgrade
from web.listener import serve_http


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)


async def test_agent_rehomes_when_its_relay_dies_and_the_stream_survives(tmp_path: Path) -> None:
    relays = [RelayProcess("--listen", "127.0.0.1:0"), RelayProcess("--listen", "127.0.0.1:0")]
    try:
        await _run(tmp_path, relays)
    finally:
        for r in relays:
            r.kill()


async def _run(tmp_path: Path, relays: list[RelayProcess]) -> None:
    relay_map = {"regions": [{"region_id": i + 1, "url": r.url} for i, r in enumerate(relays)]}
    client_key = generate_private_key()
    nodes_send, nodes_recv = trio.open_memory_channel[dict[str, Any]](16)

    async def coderd(request: Request, upgrade: Upgrade) -> Response | None:
        assert request.header("burrow-agent-token") == "tok"
        if request.path.endswith("/manifest"):
            return Response.json(200, {"agent_id": "a", "relay_map": relay_map,
                                       "directory": str(tmp_path)})
        if request.path.endswith("/coordinate"):
            ws = await upgrade.accept_websocket()
            await ws.send_message(json.dumps({"type": "welcome", "id": "w",
                                              "relay_map": relay_map}))
            named = False
            with contextlib.suppress(trio_websocket.ConnectionClosed):
                while True:
                    msg = json.loads(await ws.get_message())
                    await nodes_send.send(msg["node"])
                    if not named:
                        named = True
                        await ws.send_message(json.dumps({"type": "peer", "id": "c", "node": {
                            "key": public_key(client_key).hex(), "home_region": 1}}))
            return None
        return Response(204)

    door = FrontDoor()
    door.mount("/api/v2", coderd)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_http, door, "127.0.0.1:0")
        echo = await nursery.start(trio.serve_tcp, _echo, 0)
        echo_port = echo[0].socket.getsockname()[1]
        agent = Agent(AgentOptions(url=url, token="tok", data_dir=tmp_path / "agent",
                                   direct_address="", rehome_after=1.0, report_interval=60))
        with trio.fail_after(20):
            await nursery.start(agent.run)
            first = await nodes_recv.receive()
        home = first["home_region"]
        agent_key = bytes.fromhex(first["key"])

        # the client: a DERP path to each relay, following the agent's home region
        client = Endpoint(client_key)
        for r in relays:
            derp = DerpClient(r.url, client_key)
            await nursery.start(derp.run)
            client.add_relay(DerpPath(derp), r.url)
        await nursery.start(client.run)
        client.set_peer(agent_key, relay_url=relays[home - 1].url)

        async def follow() -> None:
            async for node in nodes_recv:
                client.set_peer(agent_key, relay_url=relays[node["home_region"] - 1].url)

        nursery.start_soon(follow)
        with trio.fail_after(30):
            stream = await client.open_stream(agent_key, f"tcp:{echo_port}")
            sent, received = bytearray(), bytearray()
            for i in range(60):
                chunk = os.urandom(32 * 1024)
                sent += chunk
                await stream.send_all(chunk)
                while len(received) < len(sent):
                    received += await stream.receive_some(65536)
                if i == 10:
                    relays[home - 1].kill()  # the agent's home relay dies mid-stream
            assert received == sent
            await stream.aclose()
        assert agent.rehomes == 1
        assert agent.home is not None
        assert agent.home.region_id != home
        agent.shutdown.set()
        with trio.fail_after(20):
            while agent.reporter.lifecycle.state.value != "off":
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
