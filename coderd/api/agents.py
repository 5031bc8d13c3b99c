"""Workspace agents: the manifest an agent starts from, its reports (lifecycle,
ports, stats), and the relay map."""

from __future__ import annotations

import re
import time
from typing import Any

from coderd.api.router import AGENT, AUTHENTICATED, Call, Route, answer
from coderd.api.schema import ApiError, Field
from coderd.auth import has_role
from coderd.deps import Coderd
from coderd.store.base import Agent, AgentLogLine, Role, Workspace
from sdk import types as t
from web.http import Response


def relay_map_value(cd: Coderd) -> t.RelayMap:
    """The regions clients and agents pick their home relay from (by latency).

    Raises:
        ValueError: a configured region is not a :class:`sdk.types.RelayRegion`.
    """
    if cd.relay_regions:
        return t.RelayMap([t.RelayRegion.from_json(r) for r in cd.relay_regions])
    primary = t.RelayRegion(
        region_id=1, code="primary", name="primary (embedded)", url=cd.access_url,
        derp_url=cd.access_url.rstrip("/") + "/derp", public_key="",
    )
    return t.RelayMap([primary])


def relay_map(cd: Coderd) -> dict[str, Any]:
    """:func:`relay_map_value` as JSON (the coordinator's welcome carries it)."""
    return relay_map_value(cd).to_json()


async def get_relay_map(call: Call) -> Response:
    return answer(200, relay_map_value(call.cd))


async def get_manifest(call: Call) -> Response:
    agent = call.agent
    if agent is None:
        raise ApiError(401, "agent authentication required")
    store = call.cd.store
    ws = await store.get_workspace(agent.workspace_id)
    owner = await store.get_user(ws.owner_id) if ws else None
    if ws is None or owner is None:
        raise ApiError(401, "agent token is no longer valid")
    timeout = agent.options.get("startup_script_timeout")
    return answer(200, t.Manifest(
        agent_id=agent.id,
        agent_name=agent.name,
        workspace_id=ws.id,
        workspace_name=ws.name,
        owner_id=owner.id,
        owner_name=owner.username,
        build_id=agent.build_id,
        os=agent.os,
        arch=agent.arch,
        directory=agent.directory,
        startup_script=agent.startup_script,
        env=dict(agent.env),
        shutdown_script=str(agent.options.get("shutdown_script", "")),
        startup_script_timeout=float(timeout) if timeout is not None else None,
        start_blocks_login=bool(agent.options.get("start_blocks_login", False)),
        access_url=call.cd.access_url,
        relay_map=relay_map_value(call.cd),
    ))


LIFECYCLE_STATES = (
    "created", "starting", "ready", "start_error", "start_timeout",
    "shutting_down", "off", "shutdown_error", "shutdown_timeout",
)
MAX_PORTS = 256
STAT_FIELDS = ("sessions_total", "sessions_open", "bytes_in", "bytes_out", "errors")


def _invalid(field: str, detail: str) -> ApiError:
    return ApiError(400, "invalid request body", validations=[{"field": field, "detail": detail}])


async def post_lifecycle(call: Call) -> Response:
    assert call.agent is not None
    at = float(call.body.get("changed_at", time.time()))
    await call.cd.store.update_agent_report(call.agent.id, lifecycle=(call.body["state"], at))
    return Response(204)


async def post_ports(call: Call) -> Response:
    assert call.agent is not None
    raw = call.body["ports"]
    if len(raw) > MAX_PORTS:
        raise _invalid("ports", f"at most {MAX_PORTS} ports")
    ports: list[dict[str, Any]] = []
    for p in raw:
        if not isinstance(p, dict) or set(p) - {"port", "address", "family", "process"}:
            raise _invalid("ports", "each port is {port, address?, family?, process?}")
        port = p.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise _invalid("ports", "port must be 1..65535")
        family = p.get("family", "tcp")
        address = p.get("address", "")
        process = p.get("process") or ""
        if family not in ("tcp", "tcp6"):
            raise _invalid("ports", "family must be tcp or tcp6")
        if not isinstance(address, str) or not re.fullmatch(r"[0-9A-Fa-f.:]{0,45}", address):
            raise _invalid("ports", "address must be an IP address")
        if not isinstance(process, str) or len(process) > 64:
            raise _invalid("ports", "process must be a name of <= 64 characters")
        ports.append({"port": port, "address": address, "family": family, "process": process})
    await call.cd.store.update_agent_report(call.agent.id, ports=ports)
    return Response(204)


async def post_stats(call: Call) -> Response:
    assert call.agent is not None
    services = call.body["services"]
    if len(services) > 32:
        raise _invalid("services", "at most 32 services")
    clean: dict[str, dict[str, int]] = {}
    for name, counters in services.items():
        if not re.fullmatch(r"[a-z0-9_-]{1,32}", name) or not isinstance(counters, dict):
            raise _invalid("services", "a map of service name to counters")
        if set(counters) - set(STAT_FIELDS):
            raise _invalid("services", f"counters are {', '.join(STAT_FIELDS)}")
        values: dict[str, int] = {}
        for k in STAT_FIELDS:
            v = counters.get(k, 0)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**63:
                raise _invalid("services", f"{name}.{k} must be a non-negative integer")
            values[k] = v
        clean[name] = values
    tunnel = call.body.get("tunnel")
    await call.cd.store.update_agent_report(
        call.agent.id, stats={"services": clean},
        tunnel=None if tunnel is None else _tunnel_stats(tunnel))
    return Response(204)


TUNNEL_PATHS = ("direct", "relay", "none")
MAX_RTT_MS = 3_600_000.0


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31


def _tunnel_stats(raw: dict[str, Any]) -> dict[str, Any]:
    """The tunnel part of a stats report, checked: {sessions, rtt_ms_median,
    rtt_ms_max (ms or null), paths: {direct, relay, none}}.

    Raises:
        ApiError: 400 naming the first field of the wrong type or range.
    """
    if set(raw) - {"sessions", "rtt_ms_median", "rtt_ms_max", "paths"}:
        raise _invalid("tunnel", "fields are sessions, rtt_ms_median, rtt_ms_max, paths")
    sessions = raw.get("sessions", 0)
    if not _count(sessions):
        raise _invalid("tunnel.sessions", "must be a non-negative integer")
    out: dict[str, Any] = {"sessions": sessions}
    for k in ("rtt_ms_median", "rtt_ms_max"):
        v = raw.get(k)
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)
                              or not 0 <= v <= MAX_RTT_MS):
            raise _invalid(f"tunnel.{k}", "must be null or milliseconds (a number >= 0)")
        out[k] = None if v is None else float(v)
    paths = raw.get("paths", {})
    if not isinstance(paths, dict) or set(paths) - set(TUNNEL_PATHS):
        raise _invalid("tunnel.paths", f"must be an object of {', '.join(TUNNEL_PATHS)} counts")
    if not all(_count(v) for v in paths.values()):
        raise _invalid("tunnel.paths", "counts must be non-negative integers")
    out["paths"] = {k: paths.get(k, 0) for k in TUNNEL_PATHS}
    return out


MAX_LOG_LINES = 50_000  # per agent; later lines are not stored (the agent marks gaps)
MAX_LOG_BATCH = 1000
MAX_LOG_LINE = 16 * 1024
LOG_SOURCES = ("startup_script", "shutdown_script")


async def post_logs(call: Call) -> Response:
    assert call.agent is not None
    raw = call.body["logs"]
    if len(raw) > MAX_LOG_BATCH:
        raise _invalid("logs", f"at most {MAX_LOG_BATCH} lines per request")
    source = call.body.get("source", "startup_script")
    lines: list[AgentLogLine] = []
    for entry in raw:
        if not isinstance(entry, dict) or set(entry) - {"at", "text"}:
            raise _invalid("logs", "each line is {text, at?}")
        text, at = entry.get("text"), entry.get("at", 0)
        if not isinstance(text, str) or len(text) > MAX_LOG_LINE:
            raise _invalid("logs", f"text must be a string of <= {MAX_LOG_LINE} characters")
        if not isinstance(at, int | float) or isinstance(at, bool) or not 0 <= at < 1e11:
            raise _invalid("logs", "at must be UNIX seconds")
        lines.append(AgentLogLine(output=text, source=source, created_at=float(at)))
    stored = await call.cd.store.append_agent_logs(call.agent.id, lines, MAX_LOG_LINES)
    return answer(200, t.LogsStored(stored, len(lines) - stored))


async def visible_agent(call: Call) -> tuple[Agent, Workspace]:
    """The agent named by the ``agent`` path parameter, and its workspace.

    Raises:
        ApiError: 404 when either is missing, or the caller neither owns the
            workspace nor has the owner role.
    """
    store = call.cd.store
    agent = await store.get_agent(call.params["agent"])
    ws = await store.get_workspace(agent.workspace_id) if agent else None
    user = call.user
    if agent is None or ws is None or (ws.owner_id != user.id and not has_role(user, Role.OWNER)):
        raise ApiError(404, "no such agent")
    return agent, ws


async def get_logs(call: Call) -> Response:
    store = call.cd.store
    agent, _ = await visible_agent(call)
    try:
        after = int(call.query("after", "0"))
    except ValueError:
        raise _invalid("after", "must be an integer") from None
    if not 0 <= after < 2**62:
        raise _invalid("after", "must be a non-negative integer")
    logs = await store.get_agent_logs(agent.id, after, MAX_LOG_BATCH)
    return answer(200, t.AgentLogs([
        t.AgentLogLine(id=line.id, at=line.created_at, source=line.source, text=line.output)
        for line in logs]))


ROUTES = [
    Route("GET", "/relaymap", get_relay_map, AUTHENTICATED, "The relay regions",
          returns=t.RelayMap),
    Route(
        "GET", "/workspaceagents/me/manifest", get_manifest, AGENT,
        "The calling agent's manifest (Burrow-Agent-Token header)",
        returns=t.Manifest,
    ),
    Route("GET", "/workspaceagents/me/relaymap", get_relay_map, AGENT,
          "The relay regions, for agents", returns=t.RelayMap),
    Route(
        "POST", "/workspaceagents/me/lifecycle", post_lifecycle, AGENT,
        "Report the agent's lifecycle state",
        body={
            "state": Field("string", required=True, enum=LIFECYCLE_STATES, max_len=32),
            "changed_at": Field("number", minimum=0, description="UNIX seconds"),
        },
        responses={204: "recorded"},
    ),
    Route(
        "POST", "/workspaceagents/me/ports", post_ports, AGENT,
        "Report the ports listening in the workspace (replaces the last report)",
        body={"ports": Field("array", required=True,
                             description="[{port, address?, family?: tcp|tcp6, process?}]")},
        responses={204: "recorded"},
    ),
    Route(
        "POST", "/workspaceagents/me/stats", post_stats, AGENT,
        "Report connection counters per service and the tunnel's RTT and paths"
        " (the latest snapshot)",
        body={"services": Field("object", required=True,
                                description="{name: {sessions_total, sessions_open, bytes_in,"
                                " bytes_out, errors}}"),
              "tunnel": Field("object",
                              description="{sessions, rtt_ms_median: ms|null,"
                              " rtt_ms_max: ms|null, paths: {direct, relay, none}}")},
        responses={204: "recorded"},
    ),
    Route(
        "POST", "/workspaceagents/me/logs", post_logs, AGENT,
        "Append startup/shutdown script output (at most 1000 lines per request;"
        " lines past 50000 per agent are not stored)",
        body={"logs": Field("array", required=True, description="[{text, at?: UNIX seconds}]"),
              "source": Field("string", enum=LOG_SOURCES, max_len=32)},
        responses={200: "{stored, dropped}"},
        returns=t.LogsStored,
    ),
    Route(
        "GET", "/workspaceagents/{agent}/logs", get_logs, AUTHENTICATED,
        "The agent's script output after id ?after=N (1000 lines at most)",
        returns=t.AgentLogs,
    ),
]
