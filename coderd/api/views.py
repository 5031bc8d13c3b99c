"""The API's records as the typed values of :mod:`sdk.types` (never secrets or
password hashes): the routes answer with them (``coderd.api.router.answer``),
the clients parse the same classes, so the JSON shape has one definition."""

from __future__ import annotations

import dataclasses

from coderd.store.base import (
    Agent,
    Build,
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
)
from sdk import types as t


def user(u: User) -> t.User:
    return t.User(
        id=u.id, username=u.username, email=u.email, roles=list(u.roles),
        created_at=u.created_at,
    )


def template(tm: Template) -> t.Template:
    return t.Template(
        id=tm.id, name=tm.name, description=tm.description,
        active_version_id=tm.active_version_id, created_by=tm.created_by,
        created_at=tm.created_at,
    )


def version(v: TemplateVersion) -> t.TemplateVersion:
    return t.TemplateVersion(
        id=v.id, template_id=v.template_id, name=v.name, archive_size=v.archive_size,
        archive_sha256=v.archive_sha256, tags=dict(v.tags), created_by=v.created_by,
        created_at=v.created_at,
    )


def resource(r: Resource) -> t.Resource:
    return t.Resource(
        id=r.id, type=r.type, name=r.name, kind=r.kind, persistence=r.persistence,
        address=str(r.metadata.get("address", "")),
    )


def agent(a: Agent) -> t.WorkspaceAgent:
    return t.WorkspaceAgent(
        id=a.id, name=a.name, resource_id=a.resource_id, os=a.os, arch=a.arch,
        directory=a.directory, created_at=a.created_at,
        last_connected_at=a.last_connected_at, disconnected_at=a.disconnected_at,
        status=a.status, lifecycle_state=a.lifecycle_state,
        lifecycle_changed_at=a.lifecycle_changed_at, ports=[dict(p) for p in a.ports],
        stats=dict(a.stats), tunnel=dict(a.tunnel), reported_at=a.reported_at,
    )


def build(b: Build, job: Job | None) -> t.Build:
    status = job.status.value if job is not None else JobStatus.FAILED.value
    return t.Build(
        id=b.id, workspace_id=b.workspace_id, build_number=b.build_number,
        transition=b.transition, template_version_id=b.template_version_id,
        initiator_id=b.initiator_id, job_id=b.job_id, status=status,
        variables=dict(b.variables), created_at=b.created_at,
        started_at=job.started_at if job else None,
        completed_at=job.completed_at if job else None,
        error=job.error if job else "job record missing",
    )


async def build_full(store: Store, b: Build) -> t.Build:
    """The build with its resources and agents."""
    return dataclasses.replace(
        build(b, await store.get_job(b.job_id)),
        resources=[resource(r) for r in await store.list_resources(b.id)],
        agents=[agent(a) for a in await store.list_agents(b.id)],
    )


_WORKSPACE_STATUS = {
    ("start", JobStatus.SUCCEEDED): "running",
    ("stop", JobStatus.SUCCEEDED): "stopped",
    ("delete", JobStatus.SUCCEEDED): "deleted",
    ("start", JobStatus.PENDING): "pending",
    ("start", JobStatus.RUNNING): "starting",
    ("stop", JobStatus.PENDING): "pending",
    ("stop", JobStatus.RUNNING): "stopping",
    ("delete", JobStatus.PENDING): "pending",
    ("delete", JobStatus.RUNNING): "deleting",
}


def workspace_status(b: Build | None, job: Job | None) -> str:
    if b is None or job is None:
        return "new"
    status = job.status
    if status in (JobStatus.FAILED, JobStatus.CANCELED, JobStatus.CANCELING):
        return status.value
    return _WORKSPACE_STATUS.get((b.transition, status), status.value)


def workspace_detail(d: WorkspaceDetail) -> t.Workspace:
    w = d.workspace
    return t.Workspace(
        id=w.id, name=w.name, owner_id=w.owner_id, owner_name=d.owner_name,
        template_id=w.template_id, template_name=d.template_name, created_at=w.created_at,
        deleted=w.deleted, status=workspace_status(d.latest_build, d.latest_job),
        latest_build=build(d.latest_build, d.latest_job) if d.latest_build else None,
        agents=t.AgentCounts(total=d.agents_total, connected=d.agents_connected),
    )


async def workspace(store: Store, w: Workspace) -> t.Workspace:
    found = await store.workspace_details(workspace_id=w.id)
    if not found:
        raise NotFound(f"no workspace {w.id}")
    return workspace_detail(found[0])


def log_line(ln: LogLine) -> t.BuildLogLine:
    return t.BuildLogLine(
        id=ln.id, created_at=ln.created_at, level=ln.level, stage=ln.stage, output=ln.output,
    )
