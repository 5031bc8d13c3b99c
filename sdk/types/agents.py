"""The agent API on the wire: the manifest, the relay map, reports and logs.

Reports are what an agent posts to ``/api/v2/workspaceagents/me/...``;
coderd checks their bodies itself (``coderd.api.agents``), these classes are
what the agent sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdk.types.wire import OMIT_NONE, Wire


@dataclass(frozen=True)
class RelayRegion(Wire):
    """One relay region: its HTTP base (``url``, for latency probes) and DERP URL."""

    region_id: int
    code: str
    name: str
    url: str
    derp_url: str
    public_key: str


@dataclass(frozen=True)
class RelayMap(Wire):
    """The regions clients and agents pick their home relay from."""

    regions: list[RelayRegion]


@dataclass(frozen=True)
class Manifest(Wire):
    """What an agent starts from (``GET /workspaceagents/me/manifest``)."""

    agent_id: str
    agent_name: str
    workspace_id: str
    workspace_name: str
    owner_id: str
    owner_name: str
    build_id: str
    os: str
    arch: str
    directory: str
    startup_script: str
    env: dict[str, str]
    shutdown_script: str
    startup_script_timeout: float | None
    start_blocks_login: bool
    access_url: str
    relay_map: RelayMap


@dataclass(frozen=True)
class Lifecycle(Wire):
    """A lifecycle report: the state entered and when (UNIX seconds)."""

    state: str
    changed_at: float | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True)
class Port(Wire):
    """A port listening in the workspace."""

    port: int
    address: str = ""
    family: str = "tcp"
    process: str | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True)
class Ports(Wire):
    """A ports report (replaces the last one)."""

    ports: list[Port]


@dataclass(frozen=True)
class Stats(Wire):
    """A stats report: counters per service, and the tunnel's sessions, RTT and paths."""

    services: dict[str, dict[str, int]]
    tunnel: dict[str, Any] | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True)
class ScriptLine(Wire):
    """One line of startup/shutdown script output as the agent sends it."""

    text: str
    at: float = 0.0


@dataclass(frozen=True)
class ScriptLogs(Wire):
    """A batch of script output (``source``: startup_script or shutdown_script)."""

    logs: list[ScriptLine]
    source: str = "startup_script"


@dataclass(frozen=True)
class LogsStored(Wire):
    """How many lines of a batch coderd stored, and how many it dropped (over the cap)."""

    stored: int
    dropped: int


@dataclass(frozen=True)
class AgentLogLine(Wire):
    """One stored line of an agent's script output, as users read it."""

    id: int
    at: float
    source: str
    text: str


@dataclass(frozen=True)
class AgentLogs(Wire):
    """A page of an agent's script output (``GET /workspaceagents/{id}/logs``)."""

    logs: list[AgentLogLine]
