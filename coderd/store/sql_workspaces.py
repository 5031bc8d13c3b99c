"""The workspaces, builds, resources, agents and state part of the SQL store."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from coderd.store.base import (
    Agent,
    AgentLogLine,
    Build,
    Conflict,
    Job,
    NotFound,
    Resource,
    Workspace,
    WorkspaceDetail,
)
from coderd.store.db import Tx
from coderd.store.sql_core import SqlCore
from coderd.store.sql_rows import (
    _BUILD_COLUMNS,
    _JOB_COLUMNS,
    _agent,
    _agent_log,
    _build,
    _insert_job,
    _job,
    _json,
    _resource,
    _workspace,
    new_id,
)


class WorkspacesSql(SqlCore):
    """The workspaces, builds, resources, agents and state part of the SQL store."""

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
