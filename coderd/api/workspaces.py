"""Workspaces and their builds (start, stop, delete)."""

from __future__ import annotations

import dataclasses

from coderd import builds
from coderd.api import views
from coderd.api.router import AUTHENTICATED, Call, Route, answer
from coderd.api.schema import ApiError, Field
from coderd.auth import has_role
from coderd.store.base import Role, Workspace
from sdk import types as t
from web.http import Response

WORKSPACE_NAME = r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?"


async def find_workspace(call: Call, ref: str) -> Workspace:
    """A workspace by id, by name (the caller's), or by ``owner.name``.

    Raises ApiError 404 when it does not exist or the caller may not see it.
    """
    store = call.cd.store
    user = call.user
    ws: Workspace | None = None
    if "." in ref:
        owner_name, _, name = ref.partition(".")
        owner = await store.get_user_by_login(owner_name)
        ws = await store.get_workspace_by_name(owner.id, name) if owner else None
    else:
        ws = await store.get_workspace_by_name(user.id, ref)
        if ws is None and len(ref) == 36:
            ws = await store.get_workspace(ref)
    if ws is None or (ws.owner_id != user.id and not has_role(user, Role.OWNER)):
        raise ApiError(404, "no such workspace", ref[:100])
    return ws


async def create_workspace(call: Call) -> Response:
    b = call.body
    store = call.cd.store
    owner = call.user
    if "owner" in b:
        if not has_role(call.user, Role.OWNER):
            raise ApiError(403, "only an owner may create workspaces for others")
        found = await store.get_user_by_login(b["owner"])
        if found is None:
            raise ApiError(404, "no such user", b["owner"])
        owner = found
    tmpl = await store.get_template(b["template"])
    if tmpl is None:
        raise ApiError(404, "no such template", b["template"])
    if await store.get_workspace_by_name(owner.id, b["name"]) is not None:
        raise ApiError(409, "a workspace with that name exists", b["name"])
    ws = await store.create_workspace(b["name"], owner.id, tmpl.id)
    await builds.start_build(call.cd, ws, "start", call.user.id, b.get("variables", {}))
    return answer(201, await views.workspace(store, ws))


async def list_workspaces(call: Call) -> Response:
    everyone = call.query("owner") == "all" and has_role(call.user, Role.OWNER)
    found = await call.cd.store.workspace_details(owner_id=None if everyone else call.user.id)
    return answer(200, [views.workspace_detail(d) for d in found])


async def get_workspace(call: Call) -> Response:
    ws = await find_workspace(call, call.params["workspace"])
    out = await views.workspace(call.cd.store, ws)
    latest = await call.cd.store.latest_build(ws.id)
    if latest is not None:
        out = dataclasses.replace(out, latest_build=await views.build_full(call.cd.store, latest))
    return answer(200, out)


async def create_build(call: Call) -> Response:
    ws = await find_workspace(call, call.params["workspace"])
    build, job = await builds.start_build(
        call.cd, ws, call.body["transition"], call.user.id, call.body.get("variables")
    )
    return answer(201, views.build(build, job))


async def list_builds(call: Call) -> Response:
    ws = await find_workspace(call, call.params["workspace"])
    out = [views.build(b, await call.cd.store.get_job(b.job_id))
           for b in await call.cd.store.list_builds(ws.id)]
    return answer(200, out)


ROUTES = [
    Route(
        "POST", "/workspaces", create_workspace, AUTHENTICATED,
        "Create a workspace from a template and start it",
        body={
            "name": Field("string", required=True, max_len=32, pattern=WORKSPACE_NAME),
            "template": Field("string", required=True, max_len=64, description="id or name"),
            "variables": Field("string-map", description="Terraform variables"),
            "owner": Field("string", max_len=254, description="owner only: another user"),
        },
        responses={201: "created; the first build is queued"},
        returns=t.Workspace,
    ),
    Route(
        "GET", "/workspaces", list_workspaces, AUTHENTICATED,
        "Your workspaces (owners: ?owner=all for everyone's)",
        returns=[t.Workspace],
    ),
    Route(
        "GET", "/workspaces/{workspace}", get_workspace, AUTHENTICATED,
        "A workspace (id, name, or owner.name) with its latest build",
        returns=t.Workspace,
    ),
    Route(
        "POST", "/workspaces/{workspace}/builds", create_build, AUTHENTICATED,
        "Start, stop or delete a workspace (queues a build)",
        body={
            "transition": Field(
                "string", required=True, enum=("start", "stop", "delete"), max_len=8
            ),
            "variables": Field("string-map", description="default: the last build's"),
        },
        responses={201: "the build, queued"},
        returns=t.Build,
    ),
    Route(
        "GET", "/workspaces/{workspace}/builds", list_builds, AUTHENTICATED,
        "A workspace's builds",
        returns=[t.Build],
    ),
]
