"""peer.coordclient against a coordinator played on 127.0.0.1 (port 0): publish on every
connection, deliver peers, reconnect after a loss or a silent peer, give up on refusals."""

from __future__ import annotations

import json

import pytest
import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from peer.coordclient import Backoff, Coordinator, CoordinatorRefused, dial
from peer.messages import Node, Peer, PeerGone, ServerMessage, Welcome
from peer.relaymap import Region

KEY = bytes(range(32))
OTHER = bytes(32 * [7])
WELCOME = Welcome("me", (Region(1, "p", "primary", "http://127.0.0.1:1"),))


async def _serve(nursery: trio.Nursery, handler: object) -> str:
    server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
    return f"ws://127.0.0.1:{server.port}/api/v2/workspaceagents/me/coordinate"


def test_backoff_doubles_with_jitter_up_to_the_maximum() -> None:
    b = Backoff(1.0, 4.0)
    delays = [b.next() for _ in range(5)]
    for d, top in zip(delays, [1, 2, 4, 4, 4], strict=True):
        assert top / 2 <= d <= top
    b.reset()
    assert 0.5 <= b.next() <= 1.0


async def test_publishes_on_every_connection_and_delivers_peers() -> None:
    nodes: list[dict[str, object]] = []
    got: list[ServerMessage] = []
    connections = 0

    async def coderd(request: trio_websocket.WebSocketRequest) -> None:
        nonlocal connections
        connections += 1
        assert dict(request.headers)[b"burrow-agent-token"] == b"t"
        ws = await request.accept()
        await ws.send_message(WELCOME.encode())
        nodes.append(json.loads(await ws.get_message()))
        await ws.send_message(Peer("c1", Node(OTHER, 1)).encode())
        await ws.send_message("garbage is skipped")
        await ws.send_message(PeerGone("c1").encode())
        if connections == 1:
            await ws.aclose()  # the coordinator goes away once
            return
        nodes.append(json.loads(await ws.get_message()))  # publish() while connected
        await trio.sleep_forever()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await _serve(nursery, coderd)
            coord = Coordinator(url, [(b"Burrow-Agent-Token", b"t")], lambda: Node(KEY, 1),
                                got.append, backoff=Backoff(0.01, 0.05))
            nursery.start_soon(coord.run)
            await coord.welcomed.wait()
            while coord.connects < 2 or len(got) < 6:
                await trio.sleep(0.01)
            await coord.publish()
            while len(nodes) < 3:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert coord.losses == 1
    assert nodes == [{"type": "node", "node": {"key": KEY.hex(), "home_region": 1}}] * 3
    assert got == [WELCOME, Peer("c1", Node(OTHER, 1)), PeerGone("c1")] * 2


async def test_refusals_in_a_row_end_the_loop_with_coderds_message() -> None:
    attempts = 0

    async def coderd(request: trio_websocket.WebSocketRequest) -> None:
        nonlocal attempts
        attempts += 1
        await request.reject(401, extra_headers=[(b"Content-Type", b"application/json")],
                             body=b'{"message": "agent token is no longer valid"}')

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await _serve(nursery, coderd)
            coord = Coordinator(url, [], lambda: None, lambda m: None, max_refusals=3,
                                backoff=Backoff(0.01, 0.02))
            with pytest.raises(CoordinatorRefused) as info:
                await coord.run()
            nursery.cancel_scope.cancel()
    assert attempts == 3
    assert info.value.status == 401
    assert info.value.message == "agent token is no longer valid"


async def test_a_coordinator_that_stops_answering_pings_is_left() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            ws.receive_data(await stream.receive_some(65536))
            if any(isinstance(e, Request) for e in ws.events()):
                break
        await stream.send_all(ws.send(AcceptConnection()))
        await stream.send_all(ws.send(TextMessage(WELCOME.encode())))
        await trio.sleep_forever()  # never reads again: no pong

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, silent, 0)
            port = listeners[0].socket.getsockname()[1]
            coord = Coordinator(f"ws://127.0.0.1:{port}/c", [], lambda: Node(KEY), lambda m: None,
                                heartbeat=0.2, backoff=Backoff(0.01, 0.02))
            nursery.start_soon(coord.run)
            while coord.losses < 2:
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert coord.connects >= 2


async def test_dial_errors_are_one_line() -> None:
    import socket

    from peer.coordclient import CoordinatorUnavailable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CoordinatorUnavailable, match="cannot reach the coordinator at ws://"):
        await dial(f"ws://127.0.0.1:{port}/api/v2/x", [], timeout=5)
    with pytest.raises(CoordinatorUnavailable, match="cannot reach"):
        await dial("http://nope/api/v2/x", [], timeout=5)
