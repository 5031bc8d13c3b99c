"""Builds: show, logs (long-poll follow) and cancel."""

from __future__ import annotations

import trio

from coderd import pubsub
from coderd.api import views
from coderd.api.router import AUTHENTICATED, Call, Route, answer
from coderd.api.schema import ApiError
from coderd.auth import has_role
from coderd.builds import on_job_completed
from coderd.store.base import Build, JobStatus, Role
from sdk import types as t
from web.http import Response

MAX_WAIT = 30.0
RECHECK = 1.0  # pubsub messages are hints: look again this often anyway


async def _build(call: Call) -> Build:
    store = call.cd.store
    b = await store.get_build(call.params["build"])
    if b is None:
        raise ApiError(404, "no such build")
    ws = await store.get_workspace(b.workspace_id)
    user = call.user
    if ws is None or (ws.owner_id != user.id and not has_role(user, Role.OWNER)):
        raise ApiError(404, "no such build")
    return b


async def get_build(call: Call) -> Response:
    return answer(200, await views.build_full(call.cd.store, await _build(call)))


def _number(call: Call, name: str, default: float, low: float, high: float) -> float:
    raw = call.query(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name} must be a number") from None
    if not low <= value <= high:
        raise ApiError(400, f"query parameter {name} must be between {low:g} and {high:g}")
    return value


async def get_logs(call: Call) -> Response:
    """Lines after ``after``; with ``wait`` > 0, waits that long for a new line or the end."""
    b = await _build(call)
    after = int(_number(call, "after", 0, 0, 2**62))
    wait = _number(call, "wait", 0, 0, MAX_WAIT)
    store = call.cd.store
    logs = await store.get_job_logs(b.job_id, after)
    job = await store.get_job(b.job_id)
    if not logs and wait > 0 and job is not None and job.completed_at is None:
        with trio.move_on_after(wait):
            async with call.cd.pubsub.subscribe(pubsub.job_logs_channel(b.job_id)) as sub:
                while True:
                    with trio.move_on_after(RECHECK):
                        await sub.__anext__()
                    logs = await store.get_job_logs(b.job_id, after)
                    job = await store.get_job(b.job_id)
                    if logs or job is None or job.completed_at is not None:
                        break
        logs = await store.get_job_logs(b.job_id, after)
        job = await store.get_job(b.job_id)
    return answer(200, t.BuildLogs(
        logs=[views.log_line(ln) for ln in logs],
        status=job.status.value if job else JobStatus.FAILED.value,
        done=job is None or job.completed_at is not None,
    ))


async def cancel(call: Call) -> Response:
    b = await _build(call)
    job = await call.cd.store.request_cancel(b.job_id)
    if job.status is JobStatus.CANCELED:
        await on_job_completed(job, call.cd.store, call.cd.pubsub)
    await call.cd.pubsub.publish(pubsub.job_logs_channel(job.id), "cancel")
    return answer(200, views.build(b, job))


ROUTES = [
    Route("GET", "/builds/{build}", get_build, AUTHENTICATED, "A build with resources and agents",
          returns=t.Build),
    Route(
        "GET", "/builds/{build}/logs", get_logs, AUTHENTICATED,
        "Build logs after id ?after=N; ?wait=S long-polls up to 30 s for more",
        returns=t.BuildLogs,
    ),
    Route("PATCH", "/builds/{build}/cancel", cancel, AUTHENTICATED, "Cancel a build",
          returns=t.Build),
]
