"""Workspaces, builds, their resources and logs on the wire."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdk.types.wire import OMIT_NONE, Wire


@dataclass(frozen=True)
class Resource(Wire):
    """Something a build made (a Terraform resource)."""

    id: str
    type: str
    name: str
    kind: str
    persistence: str
    address: str


@dataclass(frozen=True)
class WorkspaceAgent(Wire):
    """A workspace agent as users see it: where it runs and what it last reported.

    ``ports`` are ``{port, address, family, process}``; ``stats`` is
    ``{services: {name: counters}}``; ``tunnel`` is ``{sessions,
    rtt_ms_median, rtt_ms_max, paths}`` (``{}`` before the first report).
    """

    id: str
    name: str
    resource_id: str | None
    os: str
    arch: str
    directory: str
    created_at: float
    last_connected_at: float | None
    disconnected_at: float | None
    status: str
    lifecycle_state: str
    lifecycle_changed_at: float | None
    ports: list[dict[str, Any]]
    stats: dict[str, Any]
    tunnel: dict[str, Any]
    reported_at: float | None


@dataclass(frozen=True)
class Build(Wire):
    """A workspace build; its ``status`` is its provisioner job's.

    ``resources`` and ``agents`` are present only where a build is shown in
    full (``GET /builds/{id}``, a workspace's latest build).
    """

    id: str
    workspace_id: str
    build_number: int
    transition: str
    template_version_id: str
    initiator_id: str
    job_id: str
    status: str
    variables: dict[str, str]
    created_at: float
    started_at: float | None
    completed_at: float | None
    error: str | None
    resources: list[Resource] | None = field(default=None, metadata=OMIT_NONE)
    agents: list[WorkspaceAgent] | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True)
class AgentCounts(Wire):
    """How many agents a workspace's latest build has, and how many are connected."""

    total: int
    connected: int


@dataclass(frozen=True)
class Workspace(Wire):
    """A workspace with its status and latest build."""

    id: str
    name: str
    owner_id: str
    owner_name: str
    template_id: str
    template_name: str
    created_at: float
    deleted: bool
    status: str
    latest_build: Build | None
    agents: AgentCounts


@dataclass(frozen=True)
class BuildLogLine(Wire):
    """One line of a build's provisioner output."""

    id: int
    created_at: float
    level: str
    stage: str
    output: str


@dataclass(frozen=True)
class BuildLogs(Wire):
    """A page of build logs, the job's status, and whether it has ended."""

    logs: list[BuildLogLine]
    status: str
    done: bool
