"""The Store, written once in SQL for both backends.

Each public method is one transaction: a nested ``async def q(tx)`` that runs
on the database's asyncio thread (see ``aiobridge.py``) and is handed over
with :meth:`SqlStore._tx`; the methods that are a single statement go through
``_one``/``_all``/``_exec``, which build that ``q`` for them.  Dialect
differences are kept to three spots: placeholders (the Postgres adapter rewrites ``?``), row locks
(``FOR UPDATE [SKIP LOCKED]`` on Postgres; SQLite's ``BEGIN IMMEDIATE``
write transactions serialise instead), and the first-user advisory lock.

Job acquisition is a compare-and-set: pick the oldest pending job whose tags
match (on Postgres locking it with ``FOR UPDATE SKIP LOCKED`` so concurrent
daemons on any replica step over each other's candidates), then mark it
started only ``WHERE started_at IS NULL``; a zero row count means another
daemon won and the next candidate is tried.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from coderd.store.aiobridge import AsyncioThread
from coderd.store.base import (
    Agent,
    AgentLogLine,
    ApiKey,
    Build,
    Conflict,
    Daemon,
    Job,
    JobStatus,
    LogLine,
    NotFound,
    Resource,
    Store,
    Template,
    TemplateVersion,
    User,
    Workspace,
    WorkspaceDetail,
    tags_match,
)
from coderd.store.db import Database, Row, Tx

T = TypeVar("T")
ACQUIRE_SCAN = 50  # pending jobs looked at per acquire attempt
_BUILD_COLUMNS = (
    "id", "workspace_id", "template_version_id", "build_number", "transition",
    "initiator_id", "job_id", "variables", "created_at",
)
_JOB_COLUMNS = (
    "id", "kind", "input", "tags", "created_at", "started_at", "completed_at",
    "cancel_requested_at", "heartbeat_at", "daemon_id", "error", "result",
)


def new_id() -> str:
    return str(uuid.uuid4())


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _row_reader(cls: type[T], **conv: Callable[[Any], Any]) -> Callable[[Row], T]:
    """A converter of rows to ``cls``: each dataclass field is the column of
    its name, passed through ``conv[name]`` where one is given."""
    names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def read(r: Row) -> T:
        return cls(**{n: conv[n](r[n]) if n in conv else r[n] for n in names})

    return read


def _json_tuple(text: str) -> tuple[Any, ...]:
    return tuple(json.loads(text))


def _json_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


_user = _row_reader(User, roles=_json_tuple)
_key = _row_reader(ApiKey)
_template = _row_reader(Template)
_version = _row_reader(TemplateVersion, tags=json.loads)
_workspace = _row_reader(Workspace, deleted=bool)
_build = _row_reader(Build, variables=json.loads)
_job = _row_reader(Job, input=json.loads, tags=json.loads, result=_json_or_none)
_log = _row_reader(LogLine)
_agent_log = _row_reader(AgentLogLine, id=int)
_resource = _row_reader(Resource, metadata=json.loads)
_agent = _row_reader(
    Agent, env=json.loads, ports=_json_tuple, stats=json.loads, options=json.loads,
    tunnel=json.loads,
)
_daemon = _row_reader(Daemon, tags=json.loads)


async def _job_row(tx: Tx, job_id: str, lock: bool = False) -> Row:
    sql = "SELECT * FROM provisioner_jobs WHERE id = ?"
    if lock and tx.dialect == "postgres":
        sql = "SELECT * FROM provisioner_jobs WHERE id = ? FOR UPDATE"
    row = await tx.fetchone(sql, job_id)
    if row is None:
        raise NotFound(f"no job {job_id}")
    return row


async def _insert_job(
    tx: Tx, kind: str, input: Mapping[str, Any], tags: Mapping[str, str], now: float
) -> Job:
    job_id = new_id()
    await tx.execute(
        "INSERT INTO provisioner_jobs (id, kind, input, tags, created_at) VALUES (?, ?, ?, ?, ?)",
        job_id,
        kind,
        _json(dict(input)),
        _json(dict(tags)),
        now,
    )
    return Job(id=job_id, kind=kind, input=dict(input), tags=dict(tags), created_at=now)


class SqlStore(Store):
    """:class:`Store` over a :class:`Database` adapter on an asyncio thread."""

    def __init__(self, db: Database, bridge: AsyncioThread, *, owns_bridge: bool = True) -> None:
        self.backend = db.dialect
        self._db = db
        self._bridge = bridge
        self._owns_bridge = owns_bridge

    async def _tx(self, fn: Callable[[Tx], Awaitable[T]], *, write: bool = False) -> T:
        return await self._bridge.run(lambda: self._db.transaction(fn, write=write))

    # The three shapes most methods share: one read-only query whose single row
    # (or every row) is converted, or one write statement and its row count.

    async def _one(self, conv: Callable[[Row], T], sql: str, *args: Any) -> T | None:
        async def q(tx: Tx) -> T | None:
            row = await tx.fetchone(sql, *args)
            return conv(row) if row else None

        return await self._tx(q)

    async def _all(self, conv: Callable[[Row], T], sql: str, *args: Any) -> list[T]:
        async def q(tx: Tx) -> list[T]:
            return [conv(r) for r in await tx.fetchall(sql, *args)]

        return await self._tx(q)

    async def _exec(self, sql: str, *args: Any) -> int:
        async def q(tx: Tx) -> int:
            return await tx.execute(sql, *args)

        return await self._tx(q, write=True)

    async def close(self) -> None:
        await self._bridge.run(self._db.close)
        if self._owns_bridge:
            await self._bridge.aclose()

    # -- users and keys --------------------------------------------------

    async def count_users(self) -> int:
        async def q(tx: Tx) -> int:
            row = await tx.fetchone("SELECT COUNT(*) AS n FROM users")
            return int(row["n"]) if row else 0

        return await self._tx(q)

    async def create_user(
        self, username: str, email: str, hashed_password: str, roles: tuple[str, ...]
    ) -> User:
        user = User(new_id(), username, email, hashed_password, tuple(roles), time.time())

        async def q(tx: Tx) -> User:
            await _insert_user(tx, user)
            return user

        return await self._tx(q, write=True)

    async def create_first_user(self, username: str, email: str, hashed_password: str) -> User:
        user = User(new_id(), username, email, hashed_password, ("owner",), time.time())

        async def q(tx: Tx) -> User:
            if tx.dialect == "postgres":
                await tx.fetchone("SELECT pg_advisory_xact_lock(?)", 0x6669_7273)
            row = await tx.fetchone("SELECT COUNT(*) AS n FROM users")
            if row and int(row["n"]) > 0:
                raise Conflict("the first user already exists")
            await _insert_user(tx, user)
            return user

        return await self._tx(q, write=True)

    async def get_user(self, user_id: str) -> User | None:
        return await self._one(_user, "SELECT * FROM users WHERE id = ?", user_id)

    async def get_user_by_login(self, username_or_email: str) -> User | None:
        return await self._one(
            _user,
            "SELECT * FROM users WHERE username = ? OR email = ?",
            username_or_email,
            username_or_email,
        )

    async def list_users(self) -> list[User]:
        return await self._all(_user, "SELECT * FROM users ORDER BY created_at")

    async def insert_api_key(self, key: ApiKey) -> None:
        await self._exec(
            "INSERT INTO api_keys (id, user_id, hashed_secret, kind, name, created_at,"
            " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            key.id,
            key.user_id,
            key.hashed_secret,
            key.kind,
            key.name,
            key.created_at,
            key.expires_at,
        )

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        return await self._one(_key, "SELECT * FROM api_keys WHERE id = ?", key_id)

    async def get_api_key_and_user(self, key_id: str) -> tuple[ApiKey, User] | None:
        async def q(tx: Tx) -> tuple[ApiKey, User] | None:
            key = await tx.fetchone("SELECT * FROM api_keys WHERE id = ?", key_id)
            if key is None:
                return None
            user = await tx.fetchone("SELECT * FROM users WHERE id = ?", key["user_id"])
            return (_key(key), _user(user)) if user else None

        return await self._tx(q)

    async def list_api_keys(self, user_id: str, kind: str) -> list[ApiKey]:
        return await self._all(
            _key,
            "SELECT * FROM api_keys WHERE user_id = ? AND kind = ? ORDER BY created_at",
            user_id,
            kind,
        )

    async def delete_api_key(self, key_id: str) -> bool:
        return await self._exec("DELETE FROM api_keys WHERE id = ?", key_id) > 0

    async def delete_expired_api_keys(self, now: float) -> int:
        return await self._exec("DELETE FROM api_keys WHERE expires_at < ?", now)

    # -- templates -------------------------------------------------------

    async def create_template_version(
        self,
        template_name: str,
        description: str,
        created_by: str,
        version_name: str,
        archive: bytes,
        tags: Mapping[str, str] | None = None,
    ) -> tuple[Template, TemplateVersion]:
        now = time.time()
        vtags = dict(tags or {})
        digest = hashlib.sha256(archive).hexdigest()

        async def q(tx: Tx) -> tuple[Template, TemplateVersion]:
            row = await tx.fetchone("SELECT * FROM templates WHERE name = ?", template_name)
            if row is None:
                tid = new_id()
                await tx.execute(
                    "INSERT INTO templates (id, name, description, created_by, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    tid,
                    template_name,
                    description,
                    created_by,
                    now,
                )
            else:
                tid = row["id"]
            count = await tx.fetchone(
                "SELECT COUNT(*) AS n FROM template_versions WHERE template_id = ?", tid
            )
            name = version_name or f"v{int(count['n']) + 1 if count else 1}"
            version = TemplateVersion(
                new_id(), tid, name, created_by, len(archive), digest, now, vtags
            )
            await tx.execute(
                "INSERT INTO template_versions (id, template_id, name, created_by, archive,"
                " archive_size, archive_sha256, created_at, tags)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                version.id,
                tid,
                name,
                created_by,
                archive,
                len(archive),
                digest,
                now,
                _json(vtags),
            )
            if description and row is not None:
                await tx.execute(
                    "UPDATE templates SET description = ? WHERE id = ?", description, tid
                )
            await tx.execute(
                "UPDATE templates SET active_version_id = ? WHERE id = ?", version.id, tid
            )
            trow = await tx.fetchone("SELECT * FROM templates WHERE id = ?", tid)
            assert trow is not None
            return _template(trow), version

        return await self._tx(q, write=True)

    async def get_template(self, id_or_name: str) -> Template | None:
        return await self._one(
            _template, "SELECT * FROM templates WHERE id = ? OR name = ?", id_or_name, id_or_name
        )

    async def list_templates(self) -> list[Template]:
        return await self._all(_template, "SELECT * FROM templates ORDER BY name")

    async def list_template_versions(self, template_id: str) -> list[TemplateVersion]:
        return await self._all(
            _version,
            "SELECT id, template_id, name, created_by, archive_size, archive_sha256,"
            " created_at, tags FROM template_versions WHERE template_id = ?"
            " ORDER BY created_at",
            template_id,
        )

    async def get_template_version(self, version_id: str) -> TemplateVersion | None:
        return await self._one(
            _version,
            "SELECT id, template_id, name, created_by, archive_size, archive_sha256,"
            " created_at, tags FROM template_versions WHERE id = ?",
            version_id,
        )

    async def get_template_archive(self, version_id: str) -> bytes | None:
        return await self._one(
            lambda r: bytes(r["archive"]),
            "SELECT archive FROM template_versions WHERE id = ?",
            version_id,
        )

    # -- workspaces and builds -------------------------------------------

    async def create_workspace(self, name: str, owner_id: str, template_id: str) -> Workspace:
        ws = Workspace(new_id(), name, owner_id, template_id, time.time(), False)

        async def q(tx: Tx) -> Workspace:
            await tx.execute(
                "INSERT INTO workspaces (id, name, owner_id, template_id, created_at, deleted)"
                " VALUES (?, ?, ?, ?, ?, 0)",
                ws.id,
                name,
                owner_id,
                template_id,
                ws.created_at,
            )
            return ws

        return await self._tx(q, write=True)

    async def get_workspace(self, workspace_id: str) -> Workspace | None:
        return await self._one(_workspace, "SELECT * FROM workspaces WHERE id = ?", workspace_id)

    async def get_workspace_by_name(self, owner_id: str, name: str) -> Workspace | None:
        return await self._one(
            _workspace,
            "SELECT * FROM workspaces WHERE owner_id = ? AND name = ? AND deleted = 0",
            owner_id,
            name,
        )

    async def list_workspaces(self, owner_id: str | None) -> list[Workspace]:
        async def q(tx: Tx) -> list[Workspace]:
            if owner_id is None:
                rows = await tx.fetchall(
                    "SELECT * FROM workspaces WHERE deleted = 0 ORDER BY created_at"
                )
            else:
                rows = await tx.fetchall(
                    "SELECT * FROM workspaces WHERE deleted = 0 AND owner_id = ?"
                    " ORDER BY created_at",
                    owner_id,
                )
            return [_workspace(r) for r in rows]

        return await self._tx(q)

    async def workspace_details(
        self, *, owner_id: str | None = None, workspace_id: str | None = None
    ) -> list[WorkspaceDetail]:
        # One query: each workspace joined with its latest build and that build's job.
        sql = (
            "SELECT w.*, u.username AS owner_name, t.name AS template_name, "  # noqa: S608
            + ", ".join(f"b.{c} AS b_{c}" for c in _BUILD_COLUMNS)
            + ", "
            + ", ".join(f"j.{c} AS j_{c}" for c in _JOB_COLUMNS)
            + ", (SELECT COUNT(*) FROM workspace_agents a WHERE a.build_id = b.id)"
            " AS agents_total"
            ", (SELECT COUNT(*) FROM workspace_agents a WHERE a.build_id = b.id"
            " AND a.last_connected_at IS NOT NULL AND a.disconnected_at IS NULL)"
            " AS agents_connected"
            " FROM workspaces w JOIN users u ON u.id = w.owner_id"
            " JOIN templates t ON t.id = w.template_id"
            " LEFT JOIN workspace_builds b ON b.workspace_id = w.id AND b.build_number ="
            " (SELECT MAX(build_number) FROM workspace_builds WHERE workspace_id = w.id)"
            " LEFT JOIN provisioner_jobs j ON j.id = b.job_id"
        )

        async def q(tx: Tx) -> list[WorkspaceDetail]:
            if workspace_id is not None:
                rows = await tx.fetchall(sql + " WHERE w.id = ?", workspace_id)
            elif owner_id is not None:
                rows = await tx.fetchall(
                    sql + " WHERE w.deleted = 0 AND w.owner_id = ? ORDER BY w.created_at",
                    owner_id,
                )
            else:
                rows = await tx.fetchall(sql + " WHERE w.deleted = 0 ORDER BY w.created_at")
            out: list[WorkspaceDetail] = []
            for r in rows:
                b = {c: r[f"b_{c}"] for c in _BUILD_COLUMNS}
                j = {c: r[f"j_{c}"] for c in _JOB_COLUMNS}
                out.append(
                    WorkspaceDetail(
                        _workspace(r),
                        r["owner_name"],
                        r["template_name"],
                        _build(b) if b["id"] is not None else None,
                        _job(j) if j["id"] is not None else None,
                        int(r["agents_total"] or 0),
                        int(r["agents_connected"] or 0),
                    )
                )
            return out

        return await self._tx(q)

    async def mark_workspace_deleted(self, workspace_id: str) -> None:
        await self._exec("UPDATE workspaces SET deleted = 1 WHERE id = ?", workspace_id)

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
        now = time.time()
        build_id = new_id()

        async def q(tx: Tx) -> tuple[Build, Job]:
            sql = "SELECT id FROM workspaces WHERE id = ?"
            if tx.dialect == "postgres":
                sql = "SELECT id FROM workspaces WHERE id = ? FOR UPDATE"
            ws = await tx.fetchone(sql, workspace_id)
            if ws is None:
                raise NotFound(f"no workspace {workspace_id}")
            last = await tx.fetchone(
                "SELECT b.build_number, j.completed_at FROM workspace_builds b"
                " JOIN provisioner_jobs j ON j.id = b.job_id"
                " WHERE b.workspace_id = ? ORDER BY b.build_number DESC LIMIT 1",
                workspace_id,
            )
            if last is not None and last["completed_at"] is None:
                raise Conflict("the workspace's latest build is still in progress")
            number = 1 if last is None else int(last["build_number"]) + 1
            job = await _insert_job(
                tx, "workspace_build", {**job_input, "build_id": build_id}, job_tags, now
            )
            build = Build(
                build_id,
                workspace_id,
                template_version_id,
                number,
                transition,
                initiator_id,
                job.id,
                dict(variables),
                now,
            )
            await tx.execute(
                "INSERT INTO workspace_builds (id, workspace_id, template_version_id,"
                " build_number, transition, initiator_id, job_id, variables, agent_token_hash,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                build_id,
                workspace_id,
                template_version_id,
                number,
                transition,
                initiator_id,
                job.id,
                _json(dict(variables)),
                agent_token_hash,
                now,
            )
            return build, job

        return await self._tx(q, write=True)

    async def get_build(self, build_id: str) -> Build | None:
        return await self._one(_build, "SELECT * FROM workspace_builds WHERE id = ?", build_id)

    async def get_build_by_job(self, job_id: str) -> Build | None:
        return await self._one(_build, "SELECT * FROM workspace_builds WHERE job_id = ?", job_id)

    async def list_builds(self, workspace_id: str) -> list[Build]:
        return await self._all(
            _build,
            "SELECT * FROM workspace_builds WHERE workspace_id = ? ORDER BY build_number",
            workspace_id,
        )

    async def latest_build(self, workspace_id: str) -> Build | None:
        return await self._one(
            _build,
            "SELECT * FROM workspace_builds WHERE workspace_id = ?"
            " ORDER BY build_number DESC LIMIT 1",
            workspace_id,
        )

    async def get_build_agent_token_hash(self, build_id: str) -> str | None:
        return await self._one(
            lambda r: str(r["agent_token_hash"]),
            "SELECT agent_token_hash FROM workspace_builds WHERE id = ?",
            build_id,
        )

    async def record_build_outputs(
        self, build_id: str, resources: list[Resource], agents: list[Agent]
    ) -> None:
        async def q(tx: Tx) -> None:
            for r in resources:
                await tx.execute(
                    "INSERT INTO workspace_resources (id, build_id, type, name, kind,"
                    " persistence, metadata) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    r.id,
                    build_id,
                    r.type,
                    r.name,
                    r.kind,
                    r.persistence,
                    _json(dict(r.metadata)),
                )
            for a in agents:
                await tx.execute(
                    "INSERT INTO workspace_agents (id, build_id, workspace_id, resource_id, name,"
                    " token_hash, os, arch, directory, startup_script, env, created_at, options)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    a.id,
                    build_id,
                    a.workspace_id,
                    a.resource_id,
                    a.name,
                    a.token_hash,
                    a.os,
                    a.arch,
                    a.directory,
                    a.startup_script,
                    _json(dict(a.env)),
                    a.created_at,
                    _json(dict(a.options)),
                )

        await self._tx(q, write=True)

    async def list_resources(self, build_id: str) -> list[Resource]:
        return await self._all(
            _resource,
            "SELECT * FROM workspace_resources WHERE build_id = ? ORDER BY type, name",
            build_id,
        )

    async def list_agents(self, build_id: str) -> list[Agent]:
        return await self._all(
            _agent, "SELECT * FROM workspace_agents WHERE build_id = ? ORDER BY name", build_id
        )

    async def get_agent_by_token_hash(self, token_hash: str) -> Agent | None:
        return await self._one(
            _agent,
            "SELECT * FROM workspace_agents WHERE token_hash = ?"
            " ORDER BY created_at DESC LIMIT 1",
            token_hash,
        )

    async def get_agent(self, agent_id: str) -> Agent | None:
        return await self._one(_agent, "SELECT * FROM workspace_agents WHERE id = ?", agent_id)

    async def update_agent_report(
        self,
        agent_id: str,
        *,
        lifecycle: tuple[str, float] | None = None,
        ports: list[dict[str, Any]] | None = None,
        stats: dict[str, Any] | None = None,
        tunnel: dict[str, Any] | None = None,
    ) -> None:
        now = time.time()

        async def q(tx: Tx) -> None:
            if lifecycle is not None:
                await tx.execute(
                    "UPDATE workspace_agents SET lifecycle_state = ?, lifecycle_changed_at = ?,"
                    " reported_at = ? WHERE id = ?",
                    lifecycle[0],
                    lifecycle[1],
                    now,
                    agent_id,
                )
            if ports is not None:
                await tx.execute(
                    "UPDATE workspace_agents SET ports = ?, reported_at = ? WHERE id = ?",
                    _json(ports),
                    now,
                    agent_id,
                )
            if stats is not None:
                await tx.execute(
                    "UPDATE workspace_agents SET stats = ?, reported_at = ? WHERE id = ?",
                    _json(stats),
                    now,
                    agent_id,
                )
            if tunnel is not None:
                await tx.execute(
                    "UPDATE workspace_agents SET tunnel = ?, reported_at = ? WHERE id = ?",
                    _json(tunnel),
                    now,
                    agent_id,
                )

        await self._tx(q, write=True)

    async def set_agent_connected(self, agent_id: str, connected: bool) -> None:
        now = time.time()

        async def q(tx: Tx) -> None:
            if connected:
                await tx.execute(
                    "UPDATE workspace_agents SET last_connected_at = ?, disconnected_at = NULL"
                    " WHERE id = ?",
                    now,
                    agent_id,
                )
            else:
                await tx.execute(
                    "UPDATE workspace_agents SET disconnected_at = ? WHERE id = ?", now, agent_id
                )

        await self._tx(q, write=True)

    async def append_agent_logs(
        self, agent_id: str, lines: list[AgentLogLine], max_lines: int
    ) -> int:
        now = time.time()

        async def q(tx: Tx) -> int:
            row = await tx.fetchone(
                "SELECT COUNT(*) AS n FROM workspace_agent_logs WHERE agent_id = ?", agent_id
            )
            room = max(0, max_lines - int(row["n"] if row else 0))
            for line in lines[:room]:
                await tx.execute(
                    "INSERT INTO workspace_agent_logs (agent_id, created_at, source, output)"
                    " VALUES (?, ?, ?, ?)",
                    agent_id,
                    line.created_at or now,
                    line.source,
                    line.output,
                )
            return min(room, len(lines))

        return await self._tx(q, write=True)

    async def get_agent_logs(
        self, agent_id: str, after_id: int = 0, limit: int = 1000
    ) -> list[AgentLogLine]:
        return await self._all(
            _agent_log,
            "SELECT * FROM workspace_agent_logs WHERE agent_id = ? AND id > ?"
            " ORDER BY id LIMIT ?",
            agent_id,
            after_id,
            limit,
        )

    async def get_workspace_state(self, workspace_id: str) -> bytes | None:
        return await self._one(
            lambda r: bytes(r["state"]),
            "SELECT state FROM workspace_terraform_state WHERE workspace_id = ?",
            workspace_id,
        )

    async def put_workspace_state(self, workspace_id: str, state: bytes) -> None:
        now = time.time()

        async def q(tx: Tx) -> None:
            changed = await tx.execute(
                "UPDATE workspace_terraform_state SET state = ?, updated_at = ?"
                " WHERE workspace_id = ?",
                state,
                now,
                workspace_id,
            )
            if not changed:
                await tx.execute(
                    "INSERT INTO workspace_terraform_state (workspace_id, state, updated_at)"
                    " VALUES (?, ?, ?)",
                    workspace_id,
                    state,
                    now,
                )

        await self._tx(q, write=True)

    # -- the provisioner job queue ---------------------------------------

    async def enqueue_job(
        self, kind: str, input: Mapping[str, Any], tags: Mapping[str, str]
    ) -> Job:
        now = time.time()

        async def q(tx: Tx) -> Job:
            return await _insert_job(tx, kind, input, tags, now)

        return await self._tx(q, write=True)

    async def acquire_job(self, daemon_id: str, tags: Mapping[str, str]) -> Job | None:
        async def q(tx: Tx) -> Job | None:
            now = time.time()
            rows = await tx.fetchall(
                "SELECT id, tags FROM provisioner_jobs"
                " WHERE started_at IS NULL AND completed_at IS NULL"
                " ORDER BY created_at, id LIMIT ?",
                ACQUIRE_SCAN,
            )
            for row in rows:
                if not tags_match(json.loads(row["tags"]), tags):
                    continue
                if tx.dialect == "postgres":
                    locked = await tx.fetchone(
                        "SELECT id FROM provisioner_jobs WHERE id = ? AND started_at IS NULL"
                        " AND completed_at IS NULL FOR UPDATE SKIP LOCKED",
                        row["id"],
                    )
                    if locked is None:
                        continue
                taken = await tx.execute(
                    "UPDATE provisioner_jobs SET started_at = ?, heartbeat_at = ?, daemon_id = ?"
                    " WHERE id = ? AND started_at IS NULL AND completed_at IS NULL",
                    now,
                    now,
                    daemon_id,
                    row["id"],
                )
                if taken == 1:
                    return _job(await _job_row(tx, row["id"]))
            return None

        return await self._tx(q, write=True)

    async def append_job_logs(self, job_id: str, lines: list[LogLine]) -> list[LogLine]:
        now = time.time()

        async def q(tx: Tx) -> list[LogLine]:
            stored: list[LogLine] = []
            for line in lines:
                row = await tx.fetchone(
                    "INSERT INTO provisioner_job_logs (job_id, created_at, level, stage, output)"
                    " VALUES (?, ?, ?, ?, ?) RETURNING id",
                    job_id,
                    line.created_at or now,
                    line.level,
                    line.stage,
                    line.output,
                )
                assert row is not None
                stored.append(
                    LogLine(
                        id=int(row["id"]),
                        created_at=line.created_at or now,
                        level=line.level,
                        stage=line.stage,
                        output=line.output,
                    )
                )
            return stored

        return await self._tx(q, write=True)

    async def heartbeat_job(self, job_id: str, daemon_id: str) -> bool:
        now = time.time()

        async def q(tx: Tx) -> bool:
            row = await _job_row(tx, job_id, lock=True)
            if row["completed_at"] is not None or row["daemon_id"] != daemon_id:
                raise Conflict(f"job {job_id} is not running on daemon {daemon_id}")
            await tx.execute(
                "UPDATE provisioner_jobs SET heartbeat_at = ? WHERE id = ?", now, job_id
            )
            return row["cancel_requested_at"] is not None

        return await self._tx(q, write=True)

    async def complete_job(
        self,
        job_id: str,
        *,
        result: Mapping[str, Any] | None,
        error: str | None,
    ) -> Job:
        now = time.time()

        async def q(tx: Tx) -> Job:
            row = await _job_row(tx, job_id, lock=True)
            if row["completed_at"] is not None:
                raise Conflict(f"job {job_id} is already done")
            await tx.execute(
                "UPDATE provisioner_jobs SET completed_at = ?, result = ?, error = ?,"
                " started_at = COALESCE(started_at, ?) WHERE id = ?",
                now,
                None if result is None else _json(dict(result)),
                error,
                now,
                job_id,
            )
            return _job(await _job_row(tx, job_id))

        return await self._tx(q, write=True)

    async def request_cancel(self, job_id: str) -> Job:
        now = time.time()

        async def q(tx: Tx) -> Job:
            row = await _job_row(tx, job_id, lock=True)
            if row["completed_at"] is not None:
                return _job(row)
            if row["started_at"] is None:
                await tx.execute(
                    "UPDATE provisioner_jobs SET cancel_requested_at = ?, completed_at = ?,"
                    " error = ? WHERE id = ?",
                    now,
                    now,
                    "canceled before it started",
                    job_id,
                )
            elif row["cancel_requested_at"] is None:
                await tx.execute(
                    "UPDATE provisioner_jobs SET cancel_requested_at = ? WHERE id = ?",
                    now,
                    job_id,
                )
            return _job(await _job_row(tx, job_id))

        return await self._tx(q, write=True)

    async def redact_job_input(self, job_id: str, keys: tuple[str, ...]) -> None:
        async def q(tx: Tx) -> None:
            row = await tx.fetchone(
                "SELECT input, completed_at FROM provisioner_jobs WHERE id = ?", job_id
            )
            if row is None or row["completed_at"] is None:
                return
            data = json.loads(row["input"])
            if any(k in data for k in keys):
                kept = {k: v for k, v in data.items() if k not in keys}
                await tx.execute(
                    "UPDATE provisioner_jobs SET input = ? WHERE id = ?", _json(kept), job_id
                )

        await self._tx(q, write=True)

    async def fail_stale_jobs(self, heartbeat_timeout: float) -> list[str]:
        now = time.time()

        async def q(tx: Tx) -> list[str]:
            rows = await tx.fetchall(
                "SELECT id FROM provisioner_jobs WHERE started_at IS NOT NULL"
                " AND completed_at IS NULL AND heartbeat_at < ?",
                now - heartbeat_timeout,
            )
            failed: list[str] = []
            for r in rows:
                changed = await tx.execute(
                    "UPDATE provisioner_jobs SET completed_at = ?, error = ?"
                    " WHERE id = ? AND completed_at IS NULL AND heartbeat_at < ?",
                    now,
                    f"provisioner daemon stopped heartbeating for {heartbeat_timeout:g}s",
                    r["id"],
                    now - heartbeat_timeout,
                )
                if changed:
                    failed.append(r["id"])
            return failed

        return await self._tx(q, write=True)

    async def get_job(self, job_id: str) -> Job | None:
        return await self._one(_job, "SELECT * FROM provisioner_jobs WHERE id = ?", job_id)

    async def get_job_logs(self, job_id: str, after_id: int = 0) -> list[LogLine]:
        return await self._all(
            _log,
            "SELECT * FROM provisioner_job_logs WHERE job_id = ? AND id > ? ORDER BY id",
            job_id,
            after_id,
        )

    async def count_jobs_by_status(self) -> dict[str, int]:
        async def q(tx: Tx) -> dict[str, int]:
            rows = await tx.fetchall("SELECT * FROM provisioner_jobs WHERE completed_at IS NULL")
            counts = {s.value: 0 for s in JobStatus}
            for r in rows:
                counts[_job(r).status.value] += 1
            done = await tx.fetchall(
                "SELECT (error IS NULL) AS ok, (cancel_requested_at IS NOT NULL) AS canceled,"
                " COUNT(*) AS n FROM provisioner_jobs WHERE completed_at IS NOT NULL"
                " GROUP BY (error IS NULL), (cancel_requested_at IS NOT NULL)"
            )
            for r in done:
                if r["ok"]:
                    counts[JobStatus.SUCCEEDED.value] += int(r["n"])
                elif r["canceled"]:
                    counts[JobStatus.CANCELED.value] += int(r["n"])
                else:
                    counts[JobStatus.FAILED.value] += int(r["n"])
            return counts

        return await self._tx(q)

    async def upsert_daemon(self, daemon_id: str, name: str, tags: Mapping[str, str]) -> Daemon:
        now = time.time()

        async def q(tx: Tx) -> Daemon:
            changed = await tx.execute(
                "UPDATE provisioner_daemons SET name = ?, tags = ?, last_seen_at = ? WHERE id = ?",
                name,
                _json(dict(tags)),
                now,
                daemon_id,
            )
            if not changed:
                await tx.execute(
                    "INSERT INTO provisioner_daemons (id, name, tags, created_at, last_seen_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    daemon_id,
                    name,
                    _json(dict(tags)),
                    now,
                    now,
                )
            row = await tx.fetchone("SELECT * FROM provisioner_daemons WHERE id = ?", daemon_id)
            assert row is not None
            return _daemon(row)

        return await self._tx(q, write=True)

    async def list_daemons(self) -> list[Daemon]:
        return await self._all(_daemon, "SELECT * FROM provisioner_daemons ORDER BY name")


async def _insert_user(tx: Tx, user: User) -> None:
    await tx.execute(
        "INSERT INTO users (id, username, email, hashed_password, roles, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        user.id,
        user.username,
        user.email,
        user.hashed_password,
        _json(list(user.roles)),
        user.created_at,
    )
