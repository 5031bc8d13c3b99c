"""The API's route table, its dispatcher, and the OpenAPI document built from it.

Each :class:`Route` names its method, a path template (``{param}`` matches
one segment), the least role it needs (``PUBLIC`` for none), an optional
JSON body schema and a body size cap.  :meth:`Router.handle` is the one
front-door handler for ``/api/v2``: it matches, authenticates, checks the
role, validates the body and calls the route; every failure is a JSON
``{message, detail?, validations?}`` with a 4xx, and an unexpected exception
becomes a generic 500 with the traceback only in the server log.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from coderd import auth
from coderd.api.schema import (
    ApiError,
    Returns,
    Schema,
    parse_json_body,
    returns_openapi,
    schema_openapi,
)
from coderd.deps import Coderd
from coderd.store.base import Agent, Conflict, NotFound, Role, StoreError
from sdk.types.problems import ErrorBody
from sdk.types.wire import Wire, json_schema
from web.http import Request, Response, Upgrade

log = logging.getLogger("burrow.coderd.api")

PREFIX = "/api/v2"
PUBLIC = "public"
AGENT = "agent"  # authenticated by a workspace agent token, not a user
AUTHENTICATED = Role.MEMBER
JSON_BODY_MAX = 256 * 1024


@dataclass
class Call:
    """What a route handler gets."""

    cd: Coderd
    request: Request
    upgrade: Upgrade
    params: dict[str, str]
    body: dict[str, Any]
    who: auth.Authenticated | None
    agent: Agent | None = None

    @property
    def user(self) -> Any:
        if self.who is None:
            raise ApiError(401, "authentication required")
        return self.who.user

    def query(self, name: str, default: str = "") -> str:
        values = self.request.query.get(name)
        return values[-1] if values else default


RouteFn = Callable[[Call], Awaitable[Response | None]]


def answer(
    status: int, value: Wire | Sequence[Wire], headers: Sequence[tuple[str, str]] = ()
) -> Response:
    """A JSON response of one :mod:`sdk.types` value or a list of them."""
    if isinstance(value, Wire):
        return Response.json(status, value.to_json(), headers)
    return Response.json(status, [v.to_json() for v in value], headers)


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # relative to /api/v2, e.g. "/users/{user}"
    fn: RouteFn
    auth: str  # PUBLIC, AGENT or a Role value
    summary: str
    body: Schema | None = None
    raw_body: str | None = None  # content type of a non-JSON body (e.g. a tar)
    max_body: int = JSON_BODY_MAX
    responses: dict[int, str] = field(default_factory=lambda: {200: "OK"})
    # The sdk.types class of the success answer (``[cls]``: a list of them);
    # the OpenAPI response schema is derived from its fields.
    returns: Returns | None = None

    @property
    def pattern(self) -> re.Pattern[str]:
        parts = re.split(r"(\{[a-z_]+\})", self.path)
        regex = "".join(
            "(?P<" + p[1:-1] + ">[^/]+)" if p.startswith("{") else re.escape(p) for p in parts
        )
        return re.compile(regex + "/?")


class Router:
    """Dispatches ``/api/v2`` requests to routes."""

    def __init__(self, cd: Coderd, routes: list[Route]) -> None:
        self.cd = cd
        self.routes = routes
        self._compiled = [(r, r.pattern) for r in routes]

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """Raises ApiError 404 (no such path) or 405 (path exists, other methods)."""
        rel = path[len(PREFIX) :] if path.startswith(PREFIX) else path
        allowed = []
        for route, pattern in self._compiled:
            m = pattern.fullmatch(rel or "/")
            if m is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, m.groupdict()
            allowed.append(route.method)
        if allowed:
            raise ApiError(405, f"method {method} not allowed", f"allowed: {', '.join(allowed)}")
        raise ApiError(404, "no such API route", path[:200])

    async def handle(self, request: Request, upgrade: Upgrade) -> Response | None:
        """The front-door handler: never raises, never leaks a traceback."""
        start = time.perf_counter()
        route_name = ["unmatched"]
        response = await self._guarded(request, upgrade, route_name)
        code = str(response.status) if response is not None else "101"
        self.cd.metrics.api_latency.observe(
            (request.method, route_name[0], code), time.perf_counter() - start
        )
        return response

    async def _guarded(
        self, request: Request, upgrade: Upgrade, route_name: list[str]
    ) -> Response | None:
        try:
            return await self._handle(request, upgrade, route_name)
        except ApiError as exc:
            return Response.json(exc.status, exc.body())
        except auth.AuthError as exc:
            return Response.json(exc.status, {"message": str(exc)})
        except NotFound as exc:
            return Response.json(404, {"message": "not found", "detail": str(exc)[:300]})
        except Conflict as exc:
            return Response.json(409, {"message": "conflict", "detail": str(exc)[:300]})
        except StoreError:
            log.exception("database error on %s %s", request.method, request.path)
            return Response.json(503, {"message": "database unavailable"})
        except Exception:
            log.exception("API handler failed on %s %s", request.method, request.path)
            return Response.json(500, {"message": "internal server error"})

    async def _handle(
        self, request: Request, upgrade: Upgrade, route_name: list[str]
    ) -> Response | None:
        route, params = self.match(request.method, request.path)
        route_name[0] = route.path
        if len(request.body) > route.max_body:
            raise ApiError(413, "request body too large", f"limit is {route.max_body} bytes")
        who: auth.Authenticated | None = None
        agent: Agent | None = None
        if route.auth == AGENT:
            token = request.header(auth.AGENT_HEADER.lower()).strip()
            agent = await auth.authenticate_agent(self.cd.store, token)
        elif route.auth != PUBLIC:
            who = await auth.authenticate(self.cd.store, auth.token_from_headers(request.headers))
            auth.require_role(who.user, Role(route.auth))
        body: dict[str, Any] = {}
        if route.body is not None:
            ctype = request.header("content-type").split(";")[0].strip().lower()
            if request.body.strip() and ctype not in ("", "application/json"):
                raise ApiError(415, "request body must be application/json")
            body = parse_json_body(request.body, route.body)
        elif route.raw_body is None and request.body.strip() and request.method != "GET":
            raise ApiError(400, "this route takes no request body")
        return await route.fn(Call(self.cd, request, upgrade, params, body, who, agent))


async def optional_auth(call: Call) -> auth.Authenticated | None:
    """The caller's identity on a public route, if a valid token came along."""
    token = auth.token_from_headers(call.request.headers)
    if not token:
        return None
    try:
        return await auth.authenticate(call.cd.store, token)
    except auth.AuthError:
        return None


def openapi(routes: list[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing ``routes`` (3.1: its schemas are JSON
    Schema, which is what the response types derive)."""
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {}
    for r in routes:
        params = re.findall(r"\{([a-z_]+)\}", r.path)
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": f"{r.method.lower()}_{r.path.strip('/').replace('/', '_')}"
            .replace("{", "").replace("}", ""),
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ],
            "responses": {
                **{str(code): {"description": text} for code, text in r.responses.items()},
                "4XX": {
                    "description": "client error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                },
            },
            "x-burrow-role": r.auth,
        }
        if r.returns is not None:
            ok = min(code for code in r.responses if 200 <= code < 300)
            op["responses"][str(ok)]["content"] = {
                "application/json": {"schema": returns_openapi(r.returns, components)}}
        if r.auth == AGENT:
            op["security"] = [{"agentToken": []}]
        elif r.auth != PUBLIC:
            op["security"] = [{"sessionToken": []}, {"sessionCookie": []}]
        if r.body is not None:
            op["requestBody"] = {
                "required": any(f.required for f in r.body.values()),
                "content": {"application/json": {"schema": schema_openapi(r.body)}},
            }
        elif r.raw_body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {r.raw_body: {"schema": {"type": "string", "format": "binary"}}},
            }
        paths.setdefault(PREFIX + r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "burrow coderd API", "version": "2"},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "sessionToken": {"type": "apiKey", "in": "header", "name": auth.SESSION_HEADER},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": auth.SESSION_COOKIE},
                "agentToken": {"type": "apiKey", "in": "header", "name": auth.AGENT_HEADER},
            },
            "schemas": {
                "Error": json_schema(ErrorBody),
                **components,
            },
        },
    }
