"""The /api/v2 route table and its front-door handler."""

from __future__ import annotations

from coderd.api import agents, builds, coordinate, templates, users, workspaces
from coderd.api.router import PUBLIC, Call, Route, Router, openapi
from coderd.deps import Coderd
from sdk.version import VERSION
from web.http import Response


async def buildinfo(call: Call) -> Response:
    # Public: the version only (no Python version: issue 11).
    return Response.json(200, {"version": VERSION})


def routes() -> list[Route]:
    table: list[Route] = [
        Route("GET", "/buildinfo", buildinfo, PUBLIC, "Server version"),
        *users.ROUTES,
        *templates.ROUTES,
        *workspaces.ROUTES,
        *builds.ROUTES,
        *agents.ROUTES,
        *coordinate.ROUTES,
    ]
    doc: dict[str, object] = {}

    async def serve_openapi(call: Call) -> Response:
        return Response.json(200, doc)

    table.append(Route("GET", "/openapi.json", serve_openapi, PUBLIC, "This OpenAPI document"))
    doc.update(openapi(table))  # built from the very table the router serves
    return table


def make_router(cd: Coderd) -> Router:
    """The router to mount at ``/api/v2`` (``frontdoor.mount("/api/v2", r.handle, ...)``)."""
    return Router(cd, routes())
