"""The coordinator's WebSocket endpoints (see ``coderd/coordinator.py``)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import trio
import trio_websocket

from coderd.api.agents import relay_map, visible_agent
from coderd.api.router import AGENT, AUTHENTICATED, Call, Route
from coderd.api.schema import ApiError
from coderd.coordinator import (
    MAX_MESSAGE,
    REANNOUNCE,
    CoordinatorError,
    Event,
    channel,
    parse_peer_message,
)
from peer.errors import MessageError
from peer.messages import Error, Peer, PeerGone, Welcome, parse_node
from peer.relaymap import RelayMap
from web.http import Response

log = logging.getLogger("burrow.coderd.coordinator")
CLOSE_POLICY = 1008
# Agent liveness: coderd pings each agent connection this often and drops it
# (the agent shows disconnected) when a pong takes longer than the timeout --
# a frozen or partitioned agent whose TCP connection never closes.
AGENT_PING_INTERVAL = 5.0
AGENT_PING_TIMEOUT = 10.0


async def _serve(call: Call, role: str, agent_id: str) -> None:
    if not call.upgrade.is_websocket:
        raise ApiError(400, "a WebSocket upgrade is required")
    ps = call.cd.pubsub
    ch = channel(agent_id)
    conn_id = str(uuid.uuid4())
    other = "client" if role == "agent" else "agent"
    send_lock = trio.Lock()
    mine: dict[str, Any] = {}
    ws = await call.upgrade.accept_websocket()
    gauge = call.cd.metrics.coordinator_connections
    gauge[role] += 1
    if role == "agent":
        await call.cd.store.set_agent_connected(agent_id, True)

    async def send(message: Welcome | Peer | PeerGone | Error) -> None:
        async with send_lock:
            await ws.send_message(message.encode())

    async def announce() -> None:
        if mine:
            await ps.publish(ch, Event("node", role, conn_id, mine).encode())

    async def from_pubsub(sub: Any) -> None:
        async for text in sub:
            ev = Event.decode(text)
            if ev is None or ev.conn_id == conn_id or ev.role != other:
                continue
            if ev.kind == "node" and ev.node is not None:
                try:  # validated by the replica that received it; pubsub is shared
                    node = parse_node(ev.node, strict=False)
                except MessageError:
                    continue
                await send(Peer(ev.conn_id, node))
            elif ev.kind == "gone":
                await send(PeerGone(ev.conn_id))
            elif ev.kind == "hello":
                await announce()

    async def reannounce() -> None:
        while True:
            await trio.sleep(REANNOUNCE)
            await announce()

    async def keepalive(nursery: trio.Nursery) -> None:
        while True:
            await trio.sleep(AGENT_PING_INTERVAL)
            with trio.move_on_after(AGENT_PING_TIMEOUT) as timer:
                try:
                    await ws.ping()
                except trio_websocket.ConnectionClosed:
                    return  # the message loop sees the close and ends the connection
            if timer.cancelled_caught:
                log.info("coordinator %s %s: no pong within %g s; dropping it", role, conn_id,
                         AGENT_PING_TIMEOUT)
                nursery.cancel_scope.cancel()
                return

    try:
        async with ps.subscribe(ch) as sub, trio.open_nursery() as nursery:
            nursery.start_soon(from_pubsub, sub)
            nursery.start_soon(reannounce)
            if role == "agent":
                nursery.start_soon(keepalive, nursery)
            regions = RelayMap.parse(relay_map(call.cd)).regions
            await send(Welcome(conn_id, regions))
            await ps.publish(ch, Event("hello", role, conn_id).encode())
            try:
                while True:
                    message = await ws.get_message()
                    if len(message) > MAX_MESSAGE:
                        raise CoordinatorError("message too large")
                    mine.clear()
                    mine.update(parse_peer_message(message))
                    await announce()
            except CoordinatorError as exc:
                log.info("coordinator %s %s: %s", role, conn_id, exc)
                await send(Error(str(exc)))
                await ws.aclose(CLOSE_POLICY, str(exc)[:100])
            finally:
                nursery.cancel_scope.cancel()
    except* trio_websocket.ConnectionClosed:
        pass  # also when it surfaces from inside the nursery, wrapped in a group
    finally:
        gauge[role] -= 1
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await ps.publish(ch, Event("gone", role, conn_id).encode())
            if role == "agent":
                await call.cd.store.set_agent_connected(agent_id, False)


async def agent_coordinate(call: Call) -> Response | None:
    assert call.agent is not None
    await _serve(call, "agent", call.agent.id)
    return None


async def client_coordinate(call: Call) -> Response | None:
    store = call.cd.store
    agent, ws = await visible_agent(call)
    latest = await store.latest_build(ws.id)
    if ws.deleted or latest is None or latest.id != agent.build_id:
        raise ApiError(410, "that agent is gone: the workspace was rebuilt or stopped")
    await _serve(call, "client", agent.id)
    return None


ROUTES = [
    Route(
        "GET", "/workspaceagents/me/coordinate", agent_coordinate, AGENT,
        "WebSocket: the agent publishes its node and learns its clients' nodes",
        responses={101: "switching to WebSocket"},
    ),
    Route(
        "GET", "/workspaceagents/{agent}/coordinate", client_coordinate, AUTHENTICATED,
        "WebSocket: a client publishes its node and learns the agent's",
        responses={101: "switching to WebSocket"},
    ),
]
