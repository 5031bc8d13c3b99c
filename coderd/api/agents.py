"""Workspace agents: the manifest an agent starts from, and the relay map."""

from __future__ import annotations

from typing import Any

from coderd.api.router import AGENT, AUTHENTICATED, Call, Route
from coderd.api.schema import ApiError
from coderd.deps import Coderd
from relay.http import Response


def relay_map(cd: Coderd) -> dict[str, Any]:
    """The regions clients and agents pick their home relay from (by latency)."""
    regions = cd.relay_regions or [
        {
            "region_id": 1,
            "code": "primary",
            "name": "primary (embedded)",
            "url": cd.access_url,
            "derp_url": cd.access_url.rstrip("/") + "/derp",
            "public_key": "",
        }
    ]
    return {"regions": regions}


async def get_relay_map(call: Call) -> Response:
    return Response.json(200, relay_map(call.cd))


async def get_manifest(call: Call) -> Response:
    agent = call.agent
    if agent is None:
        raise ApiError(401, "agent authentication required")
    store = call.cd.store
    ws = await store.get_workspace(agent.workspace_id)
    owner = await store.get_user(ws.owner_id) if ws else None
    if ws is None or owner is None:
        raise ApiError(401, "agent token is no longer valid")
    return Response.json(
        200,
        {
            "agent_id": agent.id,
            "agent_name": agent.name,
            "workspace_id": ws.id,
            "workspace_name": ws.name,
            "owner_id": owner.id,
            "owner_name": owner.username,
            "build_id": agent.build_id,
            "os": agent.os,
            "arch": agent.arch,
            "directory": agent.directory,
            "startup_script": agent.startup_script,
            "env": dict(agent.env),
            "access_url": call.cd.access_url,
            "relay_map": relay_map(call.cd),
        },
    )


ROUTES = [
    Route("GET", "/relaymap", get_relay_map, AUTHENTICATED, "The relay regions"),
    Route(
        "GET", "/workspaceagents/me/manifest", get_manifest, AGENT,
        "The calling agent's manifest (Burrow-Agent-Token header)",
    ),
    Route("GET", "/workspaceagents/me/relaymap", get_relay_map, AGENT,
          "The relay regions, for agents"),
]
