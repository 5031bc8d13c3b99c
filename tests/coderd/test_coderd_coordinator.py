"""The coordinator: node validation (no I/O), then agents and clients over real WebSockets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio_websocket

from coderd.api.app import make_router
from coderd.coordinator import CoordinatorError, Event, parse_peer_message, validate_node
from coderd.deps import Coderd
from coderd.store.factory import open_store
from tests.coderd.apihelp import MAIN_TF, Api, tar_of
from web.frontdoor import FrontDoor
from web.listener import serve_http

NODE_A = {"key": "a" * 64, "home_region": 1, "region_latency_ms": {"1": 0.4},
          "endpoints": ["127.0.0.1:41641"]}
NODE_C = {"key": "c" * 64, "home_region": 1}


def test_node_validation() -> None:
    assert validate_node(NODE_A)["endpoints"] == ["127.0.0.1:41641"]
    assert validate_node({"key": "b" * 64}) == {
        "key": "b" * 64, "home_region": 0, "region_latency_ms": {}, "endpoints": []}
    bad: list[Any] = [
        None, [], {"key": "A" * 64}, {"key": "a" * 63}, {"key": "a" * 64, "extra": 1},
        {"key": "a" * 64, "home_region": -1}, {"key": "a" * 64, "home_region": True},
        {"key": "a" * 64, "endpoints": ["x y"]}, {"key": "a" * 64, "endpoints": ["1:1"] * 17},
        {"key": "a" * 64, "region_latency_ms": {"x": 1}},
        {"key": "a" * 64, "region_latency_ms": {"1": "fast"}},
    ]
    for node in bad:
        with pytest.raises(CoordinatorError):
            validate_node(node)
    for msg in ['{"type": "node"}', "[]", "not json", '{"type": "x", "node": {}}',
                "x" * 20000, "[" * 5000]:
        with pytest.raises(CoordinatorError):
            parse_peer_message(msg)


def test_event_round_trip_and_leniency() -> None:
    ev = Event("node", "agent", "c1", {"key": "a" * 64})
    assert Event.decode(ev.encode()) == ev
    for junk in ["", "{}", "null", '{"k": "node", "r": "martian", "c": "x"}', "hello"]:
        assert Event.decode(junk) is None


@asynccontextmanager
async def serving(cd: Coderd) -> AsyncIterator[str]:
    door = FrontDoor()
    door.mount("/api/v2", make_router(cd).handle)
    async with trio.open_nursery() as n:
        url = await n.start(serve_http, door, "127.0.0.1:0")
        yield url.replace("http://", "ws://")
        n.cancel_scope.cancel()


async def _workspace_with_agent(api: Api) -> tuple[str, str]:
    """(agent id, agent token) of a started workspace."""
    from coderd.builds import on_job_completed

    await api.setup_owner()
    r = await api.call("POST", "/templates/t/versions", raw=tar_of({"main.tf": MAIN_TF}),
                       headers={"Content-Type": "application/x-tar"})
    assert r.status == 201
    await api.call("POST", "/workspaces", {"name": "dev", "template": "t"})
    job = await api.cd.store.acquire_job("d", {})
    assert job is not None
    done = await api.cd.store.complete_job(
        job.id, result={"resources": [], "agents": [{"name": "main"}]}, error=None)
    await on_job_completed(done)
    build = await api.cd.store.get_build_by_job(job.id)
    assert build is not None
    agents = await api.cd.store.list_agents(build.id)
    return agents[0].id, str(job.input["agent_token"])


async def _recv(ws: Any) -> dict[str, Any]:
    with trio.fail_after(10):
        return dict(json.loads(await ws.get_message()))


async def test_agent_and_client_learn_each_other(api: Api) -> None:
    agent_id, agent_token = await _workspace_with_agent(api)
    r = await api.call("GET", "/workspaces/dev")
    assert r.body["latest_build"]["agents"][0]["status"] == "connecting"
    async with serving(api.cd) as base:
        agent_hdr = [(b"Burrow-Agent-Token", agent_token.encode())]
        user_hdr = [(b"Burrow-Session-Token", str(api.token).encode())]
        with trio.fail_after(20):
            async with trio_websocket.open_websocket_url(
                f"{base}/api/v2/workspaceagents/me/coordinate", extra_headers=agent_hdr
            ) as agent:
                welcome = await _recv(agent)
                assert welcome["type"] == "welcome"
                r = await api.call("GET", "/workspaces/dev")
                assert r.body["latest_build"]["agents"][0]["status"] == "connected"
                assert welcome["relay_map"]["regions"]
                await agent.send_message(json.dumps({"type": "node", "node": NODE_A}))
                async with trio_websocket.open_websocket_url(
                    f"{base}/api/v2/workspaceagents/{agent_id}/coordinate",
                    extra_headers=user_hdr,
                ) as client:
                    assert (await _recv(client))["type"] == "welcome"
                    peer = await _recv(client)  # the agent re-announces on the client's hello
                    assert peer["type"] == "peer"
                    assert peer["node"]["key"] == NODE_A["key"]
                    await client.send_message(json.dumps({"type": "node", "node": NODE_C}))
                    got = await _recv(agent)
                    assert got["type"] == "peer"
                    assert got["node"]["key"] == NODE_C["key"]
                    client_id = got["id"]
                gone = await _recv(agent)
                assert gone == {"type": "peer_gone", "id": client_id}
                # a malformed node ends that connection with an error message
                await agent.send_message('{"type": "node", "node": {"key": "nope"}}')
                err = await _recv(agent)
                assert err["type"] == "error"
                assert "key" in err["message"]
        with trio.fail_after(10):
            while True:  # the server side notices the close a moment later
                r = await api.call("GET", "/workspaces/dev")
                if r.body["latest_build"]["agents"][0]["status"] == "disconnected":
                    break
                await trio.sleep(0.05)


async def test_only_entitled_users_may_coordinate(api: Api) -> None:
    agent_id, _ = await _workspace_with_agent(api)
    bob = await api.make_user("bob")
    async with serving(api.cd) as base:
        for path, hdr in [
            (f"/api/v2/workspaceagents/{agent_id}/coordinate", [(b"Burrow-Session-Token",
                                                                 bob.encode())]),
            (f"/api/v2/workspaceagents/{agent_id}/coordinate", []),
            ("/api/v2/workspaceagents/me/coordinate", [(b"Burrow-Agent-Token", b"forged")]),
            ("/api/v2/workspaceagents/nope/coordinate", [(b"Burrow-Session-Token",
                                                          str(api.token).encode())]),
        ]:
            with trio.fail_after(10), pytest.raises(trio_websocket.HandshakeError):
                async with trio_websocket.open_websocket_url(base + path, extra_headers=hdr):
                    pass


@pytest.mark.parametrize("backend", ["postgres"])
async def test_two_replicas_coordinate_through_postgres(
    api: Api, db_config: dict[str, str], backend: str
) -> None:
    agent_id, agent_token = await _workspace_with_agent(api)
    other = await open_store(**db_config)  # a second replica on the same database
    try:
        cd2 = Coderd(other.store, other.pubsub, "http://127.0.0.1:1")
        async with serving(api.cd) as base1, serving(cd2) as base2:
            with trio.fail_after(20):
                async with trio_websocket.open_websocket_url(
                    f"{base1}/api/v2/workspaceagents/me/coordinate",
                    extra_headers=[(b"Burrow-Agent-Token", agent_token.encode())],
                ) as agent:
                    await _recv(agent)
                    await agent.send_message(json.dumps({"type": "node", "node": NODE_A}))
                    async with trio_websocket.open_websocket_url(
                        f"{base2}/api/v2/workspaceagents/{agent_id}/coordinate",
                        extra_headers=[(b"Burrow-Session-Token", str(api.token).encode())],
                    ) as client:
                        await _recv(client)
                        peer = await _recv(client)
                        assert peer["node"]["key"] == NODE_A["key"]
                        await client.send_message(json.dumps({"type": "node", "node": NODE_C}))
                        got = await _recv(agent)
                        assert got["node"]["key"] == NODE_C["key"]
    finally:
        await other.aclose()
