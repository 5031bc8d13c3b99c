"""Workspace builds: starting one, and recording what it made when its job ends.

A build is a workspace transition (start, stop, delete) carried out by one
provisioner job.  :func:`start_build` writes the build and its job in one
transaction (the job input is a :class:`sdk.types.BuildInput`, the type
the daemon parses it with) and wakes daemons through pubsub.  When a daemon reports the job done,
the provisioner API calls :func:`on_job_completed`, which stores the
Terraform state, records resources and agents of a successful build, and
marks a deleted workspace.  A build's state is its job's status.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any, cast

import trio

from coderd import deps, pubsub
from coderd.store.base import (
    Agent,
    Build,
    Conflict,
    Job,
    JobStatus,
    NotFound,
    Resource,
    Store,
    Workspace,
)
from sdk.types import jobs as sdk_jobs
from sdk.types.jobs import TRANSITIONS, BuildInput, BuildResult, ProtocolError, Transition

log = logging.getLogger("burrow.coderd.builds")

JOB_KIND_BUILD = sdk_jobs.JOB_KIND_BUILD
# Job input a finished build no longer needs: the agent token (a secret) and
# the template and state copies (blobs; the originals stay in their tables).
REDACTED_INPUT = ("agent_token", "template", "state")
BUILDS_CHANNEL = "builds"


def hash_agent_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def start_build(
    cd: deps.Coderd,
    workspace: Workspace,
    transition: str,
    initiator_id: str,
    variables: Mapping[str, str] | None = None,
) -> tuple[Build, Job]:
    """Queue a build of ``workspace``.

    A start uses the template's active version; stop and delete use the
    version of the last build.  Variables default to the last build's.  The
    job carries the version's provisioner tags (plus the server's
    ``job_tags``), so only daemons with all of them take it.

    Raises:
        NotFound: the template, its version or the owner is gone.
        Conflict: the workspace's latest build is still in progress, or it is deleted.
        ValueError: ``transition`` is not start, stop or delete.
    """
    store = cd.store
    if workspace.deleted:
        raise Conflict("the workspace is deleted")
    last = await store.latest_build(workspace.id)
    if transition == "start" or last is None:
        template = await store.get_template(workspace.template_id)
        if template is None or template.active_version_id is None:
            raise NotFound("the workspace's template has no version")
        version_id = template.active_version_id
    else:
        version_id = last.template_version_id
    if variables is None:
        variables = dict(last.variables) if last is not None else {}
    version = await store.get_template_version(version_id)
    archive = await store.get_template_archive(version_id)
    owner = await store.get_user(workspace.owner_id)
    if version is None or archive is None or owner is None:
        raise NotFound("the template version or the owner is gone")
    state = await store.get_workspace_state(workspace.id)
    agent_token = secrets.token_urlsafe(32)
    if transition not in TRANSITIONS:
        raise ValueError(f"transition must be one of {', '.join(TRANSITIONS)}")
    job_input = BuildInput(
        template=archive,
        transition=cast(Transition, transition),
        workspace_name=workspace.name,
        workspace_owner=owner.username,
        agent_token=agent_token,
        access_url=cd.access_url,
        state=state,
        variables=dict(variables),
        workspace_id=workspace.id,
    ).to_json()  # the store fills in build_id
    build, job = await store.create_build(
        workspace.id,
        version_id,
        transition,
        initiator_id,
        variables,
        job_input,
        {**version.tags, **cd.job_tags},
        hash_agent_token(agent_token),
    )
    await cd.pubsub.publish(pubsub.JOBS, job.id)
    await cd.pubsub.publish(BUILDS_CHANNEL, build.id)
    log.info(
        "build queued: workspace=%s/%s transition=%s build=%s job=%s",
        owner.username, workspace.name, transition, build.build_number, job.id,
    )
    return build, job


def _outcome(job: Job) -> BuildResult:
    """The job's result as the daemon's type; an invalid one yields nothing (logged)."""
    try:
        return BuildResult.from_json(job.result or {})
    except ProtocolError as exc:
        log.warning("job %s: its result is not a build result (%s); nothing recorded",
                    job.id, exc)
        return BuildResult()


def _resources(build_id: str, raw: Any) -> list[Resource]:
    out: list[Resource] = []
    for r in raw if isinstance(raw, list) else []:
        if not isinstance(r, dict):
            continue
        out.append(
            Resource(
                id=str(uuid.uuid4()),
                build_id=build_id,
                type=str(r.get("type", "")),
                name=str(r.get("name", "")),
                kind=str(r.get("kind", "peripheral")),
                persistence=str(r.get("lifetime", r.get("persistence", "persistent"))),
                metadata={"address": str(r.get("address", ""))},
            )
        )
    return out


def agent_options(raw: dict[str, Any]) -> dict[str, Any]:
    """The agent options a template declared (wrong types are ignored)."""
    out: dict[str, Any] = {}
    if isinstance(raw.get("shutdown_script"), str):
        out["shutdown_script"] = raw["shutdown_script"]
    timeout = raw.get("startup_script_timeout")
    if isinstance(timeout, str):
        try:
            timeout = float(timeout)
        except ValueError:
            timeout = None
    if isinstance(timeout, int | float) and not isinstance(timeout, bool) and 0 < timeout < 1e7:
        out["startup_script_timeout"] = float(timeout)
    blocks = raw.get("start_blocks_login")
    if isinstance(blocks, bool) or blocks in ("true", "false"):
        out["start_blocks_login"] = blocks is True or blocks == "true"
    return out


def _agents(
    build: Build, token_hash: str, resources: list[Resource], raw: Any
) -> list[Agent]:
    by_address = {str(r.metadata.get("address", "")): r.id for r in resources}
    for r in resources:  # "terraform_data.agent" also names "terraform_data.agent[0]"
        addr = str(r.metadata.get("address", ""))
        by_address.setdefault(addr.split("[", 1)[0], r.id)
    now = time.time()
    out: list[Agent] = []
    for a in raw if isinstance(raw, list) else []:
        if not isinstance(a, dict) or not isinstance(a.get("name"), str):
            continue
        env = a.get("env")
        out.append(
            Agent(
                id=str(uuid.uuid4()),
                build_id=build.id,
                workspace_id=build.workspace_id,
                resource_id=by_address.get(str(a.get("resource") or "")),
                name=a["name"],
                token_hash=token_hash,
                os=str(a.get("os", "linux")),
                arch=str(a.get("arch", "amd64")),
                directory=str(a.get("directory", "")),
                startup_script=str(a.get("startup_script", "")),
                env={str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {},
                created_at=now,
                options=agent_options(a),
            )
        )
    return out


async def on_job_completed(
    job: Job, store: Store | None = None, ps: pubsub.Pubsub | None = None
) -> None:
    """Record a finished workspace-build job's outcome.

    Stores the Terraform state the job left (also after a failure), records
    the resources and agents of a successful build, marks the workspace
    deleted after a successful delete, and strips the agent token and the
    template/state copies from the job's stored input.  Jobs that are no build are ignored.
    ``store``/``ps`` default to the current :class:`coderd.deps.Coderd`.

    Raises:
        LookupError: no store given and none set with ``coderd.deps.use``.
    """
    if store is None or ps is None:
        cd = deps.current()
        store = store or cd.store
        ps = ps or cd.pubsub
    build = await store.get_build_by_job(job.id)
    if build is None:
        return
    result = _outcome(job)
    state = result.state
    if state is not None:
        await store.put_workspace_state(build.workspace_id, state)
    if job.status is JobStatus.SUCCEEDED:
        token_hash = await store.get_build_agent_token_hash(build.id) or ""
        resources = _resources(build.id, result.resources)
        agents = _agents(build, token_hash, resources, result.agents)
        await store.record_build_outputs(build.id, resources, agents)
        if build.transition == "delete":
            await store.mark_workspace_deleted(build.workspace_id)
    await store.redact_job_input(job.id, REDACTED_INPUT)
    await ps.publish(pubsub.job_logs_channel(job.id), "done")
    await ps.publish(BUILDS_CHANNEL, build.id)
    log.info("build %s finished: %s", build.id, job.status.value)


async def reap_stale_jobs(
    cd: deps.Coderd, *, heartbeat_timeout: float, interval: float
) -> None:
    """Forever: fail jobs whose daemon stopped heartbeating, and record them."""
    while True:
        try:
            for job_id in await cd.store.fail_stale_jobs(heartbeat_timeout):
                job = await cd.store.get_job(job_id)
                if job is not None:
                    log.warning("job %s failed: no heartbeat for %gs", job_id, heartbeat_timeout)
                    await on_job_completed(job, cd.store, cd.pubsub)
        except Exception:
            log.exception("stale job reaper")
        await trio.sleep(interval)
