"""The one storage interface of coderd, and the records it returns.

Two backends implement :class:`Store`: SQLite (embedded default) and
PostgreSQL.  Both share the SQL in ``coderd/store/queries.py``; only the
connection handling, placeholders and row locking differ.  Every method is a
trio coroutine and runs in one database transaction.

Provisioner jobs are the work queue between coderd and provisioner daemons.
A job's life, as recorded by its timestamps::

    enqueue_job ──> pending ──acquire_job──> running ──complete_job──> succeeded | failed
                      │                         │
                 request_cancel           request_cancel (canceled_at set; the daemon
                      │                         sees it on its next heartbeat and
                      v                         completes with an error) ──> canceled
                   canceled
                                            no heartbeat for the timeout:
                                            fail_stale_jobs ──> failed

A job is *done* once ``completed_at`` is set; nothing changes it after that.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class StoreError(Exception):
    """Base of the storage errors."""


class NotFound(StoreError):
    """The record does not exist."""


class Conflict(StoreError):
    """A uniqueness rule or a state rule refused the change (e.g. a name taken)."""


class Role(enum.StrEnum):
    OWNER = "owner"
    TEMPLATE_ADMIN = "template-admin"
    MEMBER = "member"


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    CANCELING = "canceling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class Transition(enum.StrEnum):
    START = "start"
    STOP = "stop"
    DELETE = "delete"


@dataclass(frozen=True)
class User:
    id: str
    username: str
    email: str
    hashed_password: str
    roles: tuple[str, ...]
    created_at: float


@dataclass(frozen=True)
class ApiKey:
    """A session or API token.  The secret itself is never stored, only its hash."""

    id: str
    user_id: str
    hashed_secret: str
    kind: str  # "session" | "token"
    name: str
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class Template:
    id: str
    name: str
    description: str
    created_by: str
    active_version_id: str | None
    created_at: float


@dataclass(frozen=True)
class TemplateVersion:
    """A version's metadata; the archive bytes come from ``get_template_archive``."""

    id: str
    template_id: str
    name: str
    created_by: str
    archive_size: int
    archive_sha256: str
    created_at: float
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Workspace:
    id: str
    name: str
    owner_id: str
    template_id: str
    created_at: float
    deleted: bool


@dataclass(frozen=True)
class Build:
    id: str
    workspace_id: str
    template_version_id: str
    build_number: int
    transition: str
    initiator_id: str
    job_id: str
    variables: Mapping[str, str]
    created_at: float


@dataclass(frozen=True)
class Job:
    """A provisioner job.  ``status`` is derived from the timestamps."""

    id: str
    kind: str
    input: Mapping[str, Any]
    tags: Mapping[str, str]
    created_at: float
    started_at: float | None = None
    completed_at: float | None = None
    cancel_requested_at: float | None = None
    heartbeat_at: float | None = None
    daemon_id: str | None = None
    error: str | None = None
    result: Mapping[str, Any] | None = None

    @property
    def status(self) -> JobStatus:
        if self.completed_at is not None:
            if self.error is None:
                return JobStatus.SUCCEEDED
            if self.cancel_requested_at is not None:
                return JobStatus.CANCELED
            return JobStatus.FAILED
        if self.started_at is None:
            return JobStatus.PENDING
        if self.cancel_requested_at is not None:
            return JobStatus.CANCELING
        return JobStatus.RUNNING


@dataclass(frozen=True)
class AgentLogLine:
    """One line of an agent's script output.  ``id`` is assigned by the store."""

    output: str
    source: str = "startup_script"
    created_at: float = 0.0
    id: int = 0


@dataclass(frozen=True)
class LogLine:
    """One line of job output.  ``id`` is assigned by the store (0 before)."""

    output: str
    level: str = "info"
    stage: str = ""
    created_at: float = 0.0
    id: int = 0


@dataclass(frozen=True)
class Resource:
    id: str
    build_id: str
    type: str
    name: str
    kind: str  # "computational" | "peripheral"
    persistence: str  # "persistent" | "ephemeral"
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Agent:
    id: str
    build_id: str
    workspace_id: str
    resource_id: str | None
    name: str
    token_hash: str
    os: str
    arch: str
    directory: str
    startup_script: str
    env: Mapping[str, str]
    created_at: float
    last_connected_at: float | None = None
    disconnected_at: float | None = None
    lifecycle_state: str = "created"
    lifecycle_changed_at: float | None = None
    ports: tuple[Mapping[str, Any], ...] = ()
    stats: Mapping[str, Any] = field(default_factory=dict)
    reported_at: float | None = None
    # The tunnel part of the last stats report: sessions, rtt_ms_median,
    # rtt_ms_max (None before an RTT is measured), paths {direct, relay, none}.
    tunnel: Mapping[str, Any] = field(default_factory=dict)
    # Template-declared options beyond the startup script: shutdown_script,
    # startup_script_timeout (seconds), start_blocks_login (bool).
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``connected``, ``disconnected`` or ``connecting`` (never connected yet)."""
        if self.last_connected_at is None:
            return "connecting"
        return "connected" if self.disconnected_at is None else "disconnected"


@dataclass(frozen=True)
class WorkspaceDetail:
    """A workspace with what its listing shows, read in one transaction."""

    workspace: Workspace
    owner_name: str
    template_name: str
    latest_build: Build | None
    latest_job: Job | None
    agents_total: int = 0  # agents of the latest build
    agents_connected: int = 0  # of those, with a live coordinator connection


@dataclass(frozen=True)
class Daemon:
    id: str
    name: str
    tags: Mapping[str, str]
    created_at: float
    last_seen_at: float


class Store(abc.ABC):
    """Everything coderd keeps.  All methods are trio coroutines.

    Errors: :class:`NotFound` for a missing record where one is required,
    :class:`Conflict` for a uniqueness or state rule, :class:`StoreError` for
    a backend failure.
    """

    backend: str

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- users and keys --------------------------------------------------

    @abc.abstractmethod
    async def count_users(self) -> int: ...

    @abc.abstractmethod
    async def create_user(
        self, username: str, email: str, hashed_password: str, roles: tuple[str, ...]
    ) -> User:
        """Raises Conflict if the username or email is taken."""

    @abc.abstractmethod
    async def create_first_user(
        self, username: str, email: str, hashed_password: str
    ) -> User:
        """Create the owner, atomically only if there are no users; else Conflict."""

    @abc.abstractmethod
    async def get_user(self, user_id: str) -> User | None: ...

    @abc.abstractmethod
    async def get_user_by_login(self, username_or_email: str) -> User | None: ...

    @abc.abstractmethod
    async def list_users(self) -> list[User]: ...

    @abc.abstractmethod
    async def insert_api_key(self, key: ApiKey) -> None: ...

    @abc.abstractmethod
    async def get_api_key(self, key_id: str) -> ApiKey | None: ...

    @abc.abstractmethod
    async def get_api_key_and_user(self, key_id: str) -> tuple[ApiKey, User] | None:
        """A key with its user, in one round trip (every authenticated request needs both)."""

    @abc.abstractmethod
    async def list_api_keys(self, user_id: str, kind: str) -> list[ApiKey]: ...

    @abc.abstractmethod
    async def delete_api_key(self, key_id: str) -> bool: ...

    @abc.abstractmethod
    async def delete_expired_api_keys(self, now: float) -> int:
        """Remove keys that expired before ``now``; returns how many."""

    # -- templates -------------------------------------------------------

    @abc.abstractmethod
    async def create_template_version(
        self,
        template_name: str,
        description: str,
        created_by: str,
        version_name: str,
        archive: bytes,
        tags: Mapping[str, str] | None = None,
    ) -> tuple[Template, TemplateVersion]:
        """Create the template if needed, add a version and make it active.

        ``tags``: provisioner tags the version's build jobs carry.
        """

    @abc.abstractmethod
    async def get_template(self, id_or_name: str) -> Template | None: ...

    @abc.abstractmethod
    async def list_templates(self) -> list[Template]: ...

    @abc.abstractmethod
    async def list_template_versions(self, template_id: str) -> list[TemplateVersion]: ...

    @abc.abstractmethod
    async def get_template_version(self, version_id: str) -> TemplateVersion | None: ...

    @abc.abstractmethod
    async def get_template_archive(self, version_id: str) -> bytes | None: ...

    # -- workspaces and builds -------------------------------------------

    @abc.abstractmethod
    async def create_workspace(
        self,
        name: str,
        owner_id: str,
        template_id: str,
    ) -> Workspace:
        """Raises Conflict if the owner already has a live workspace of that name."""

    @abc.abstractmethod
    async def get_workspace(self, workspace_id: str) -> Workspace | None: ...

    @abc.abstractmethod
    async def get_workspace_by_name(self, owner_id: str, name: str) -> Workspace | None: ...

    @abc.abstractmethod
    async def list_workspaces(self, owner_id: str | None) -> list[Workspace]: ...

    @abc.abstractmethod
    async def workspace_details(
        self, *, owner_id: str | None = None, workspace_id: str | None = None
    ) -> list[WorkspaceDetail]:
        """Live workspaces (of one owner, or one by id even if deleted) with their
        owner's and template's names and latest build and job."""

    @abc.abstractmethod
    async def mark_workspace_deleted(self, workspace_id: str) -> None: ...

    @abc.abstractmethod
    async def create_build(
        self,
        workspace_id: str,
        template_version_id: str,
        transition: str,
        initiator_id: str,
        variables: Mapping[str, str],
        job_input: Mapping[str, Any],
        job_tags: Mapping[str, str],
        agent_token_hash: str,
    ) -> tuple[Build, Job]:
        """Add the next build and its job, in one transaction.

        ``job_input`` gets ``build_id`` added.  Raises Conflict if the
        workspace's latest build's job is not done.
        """

    @abc.abstractmethod
    async def get_build(self, build_id: str) -> Build | None: ...

    @abc.abstractmethod
    async def get_build_by_job(self, job_id: str) -> Build | None: ...

    @abc.abstractmethod
    async def list_builds(self, workspace_id: str) -> list[Build]: ...

    @abc.abstractmethod
    async def latest_build(self, workspace_id: str) -> Build | None: ...

    @abc.abstractmethod
    async def get_build_agent_token_hash(self, build_id: str) -> str | None: ...

    @abc.abstractmethod
    async def record_build_outputs(
        self, build_id: str, resources: list[Resource], agents: list[Agent]
    ) -> None: ...

    @abc.abstractmethod
    async def list_resources(self, build_id: str) -> list[Resource]: ...

    @abc.abstractmethod
    async def list_agents(self, build_id: str) -> list[Agent]: ...

    @abc.abstractmethod
    async def get_agent_by_token_hash(self, token_hash: str) -> Agent | None: ...

    @abc.abstractmethod
    async def get_agent(self, agent_id: str) -> Agent | None: ...

    @abc.abstractmethod
    async def update_agent_report(
        self,
        agent_id: str,
        *,
        lifecycle: tuple[str, float] | None = None,
        ports: list[dict[str, Any]] | None = None,
        stats: dict[str, Any] | None = None,
        tunnel: dict[str, Any] | None = None,
    ) -> None:
        """Store what the agent reported (only the parts given)."""

    @abc.abstractmethod
    async def set_agent_connected(self, agent_id: str, connected: bool) -> None:
        """Record that the agent's coordinator connection opened (True) or ended."""

    @abc.abstractmethod
    async def append_agent_logs(
        self, agent_id: str, lines: list[AgentLogLine], max_lines: int
    ) -> int:
        """Append script output lines, keeping at most ``max_lines`` per agent:
        lines past that are not stored.  Returns how many were stored."""

    @abc.abstractmethod
    async def get_agent_logs(
        self, agent_id: str, after_id: int = 0, limit: int = 1000
    ) -> list[AgentLogLine]:
        """The agent's log lines with ``id > after_id``, oldest first, at most ``limit``."""

    @abc.abstractmethod
    async def get_workspace_state(self, workspace_id: str) -> bytes | None:
        """The workspace's Terraform state, or None before its first apply."""

    @abc.abstractmethod
    async def put_workspace_state(self, workspace_id: str, state: bytes) -> None: ...

    # -- the provisioner job queue ---------------------------------------

    @abc.abstractmethod
    async def enqueue_job(
        self, kind: str, input: Mapping[str, Any], tags: Mapping[str, str]
    ) -> Job: ...

    @abc.abstractmethod
    async def acquire_job(self, daemon_id: str, tags: Mapping[str, str]) -> Job | None:
        """Atomically take the oldest pending job whose tags are all in ``tags``.

        Each job is handed to exactly one daemon, also across replicas.
        """

    @abc.abstractmethod
    async def append_job_logs(self, job_id: str, lines: list[LogLine]) -> list[LogLine]:
        """Store lines (ids assigned, in order); returns them with their ids."""

    @abc.abstractmethod
    async def heartbeat_job(self, job_id: str, daemon_id: str) -> bool:
        """Record that ``daemon_id`` still runs the job; True if cancel was requested.

        Raises Conflict if the job is not running on that daemon (done, or
        taken over), so the daemon knows to stop.
        """

    @abc.abstractmethod
    async def complete_job(
        self,
        job_id: str,
        *,
        result: Mapping[str, Any] | None,
        error: str | None,
    ) -> Job:
        """Finish a job (exactly one of result/error should be given).

        Raises NotFound for an unknown job and Conflict if it is already done.
        """

    @abc.abstractmethod
    async def request_cancel(self, job_id: str) -> Job:
        """Ask for cancellation: a pending job is canceled at once, a running one
        on its daemon's next heartbeat.  A done job is returned unchanged.
        Raises NotFound."""

    @abc.abstractmethod
    async def redact_job_input(self, job_id: str, keys: tuple[str, ...]) -> None:
        """Drop ``keys`` from a done job's input (secrets and blobs it no longer needs)."""

    @abc.abstractmethod
    async def fail_stale_jobs(self, heartbeat_timeout: float) -> list[str]:
        """Fail running jobs whose last heartbeat is older than the timeout."""

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    async def get_job_logs(self, job_id: str, after_id: int = 0) -> list[LogLine]: ...

    @abc.abstractmethod
    async def count_jobs_by_status(self) -> dict[str, int]: ...

    @abc.abstractmethod
    async def upsert_daemon(self, daemon_id: str, name: str, tags: Mapping[str, str]) -> Daemon: ...

    @abc.abstractmethod
    async def list_daemons(self) -> list[Daemon]: ...


def tags_match(job_tags: Mapping[str, str], daemon_tags: Mapping[str, str]) -> bool:
    """A job matches a daemon when every job tag is among the daemon's tags."""
    return all(daemon_tags.get(k) == v for k, v in job_tags.items())
