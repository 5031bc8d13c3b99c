"""Templates and their versions (tar archives of Terraform files)."""

from __future__ import annotations

import re

from coderd.api import views
from coderd.api.router import AUTHENTICATED, Call, Route, answer
from coderd.api.schema import ApiError
from coderd.archive import MAX_UPLOAD, ArchiveError, check_template_archive
from coderd.store.base import Conflict, Role, Template
from sdk import types as t
from web.http import Response

TEMPLATE_NAME = r"[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?"
TAG = r"[A-Za-z0-9_.-]{1,64}"
TAR_TYPES = ("application/x-tar", "application/octet-stream", "application/gzip")


async def _template(call: Call) -> Template:
    tmpl = await call.cd.store.get_template(call.params["template"])
    if tmpl is None:
        raise ApiError(404, "no such template", call.params["template"][:100])
    return tmpl


async def list_templates(call: Call) -> Response:
    return answer(200, [views.template(t) for t in await call.cd.store.list_templates()])


async def get_template(call: Call) -> Response:
    return answer(200, views.template(await _template(call)))


async def list_versions(call: Call) -> Response:
    tmpl = await _template(call)
    versions = await call.cd.store.list_template_versions(tmpl.id)
    return answer(200, [views.version(v) for v in versions])


def _tags(values: list[str]) -> dict[str, str]:
    """``k=v`` query values -> tags; ApiError 400 when malformed."""
    if len(values) > 16:
        raise ApiError(400, "at most 16 tags")
    tags: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(TAG, key) or not re.fullmatch(TAG, value):
            raise ApiError(
                400,
                "invalid tag",
                validations=[{"field": "tag", "detail": f"want key=value, each matching {TAG}"}],
            )
        tags[key] = value
    return tags


async def push_version(call: Call) -> Response:
    name = call.params["template"]
    if not re.fullmatch(TEMPLATE_NAME, name):
        raise ApiError(
            400,
            "invalid template name",
            validations=[{"field": "template", "detail": f"must match {TEMPLATE_NAME}"}],
        )
    ctype = call.request.header("content-type").split(";")[0].strip().lower()
    if ctype not in TAR_TYPES:
        raise ApiError(415, "the body must be a tar archive", f"Content-Type one of {TAR_TYPES}")
    description = call.query("description")[:512]
    version_name = call.query("version")[:64]
    if version_name and not re.fullmatch(r"[A-Za-z0-9._-]+", version_name):
        raise ApiError(400, "invalid version name", "letters, digits, '.', '_' and '-' only")
    tags = _tags(call.request.query.get("tag", []))
    try:
        files = check_template_archive(call.request.body)
    except ArchiveError as exc:
        raise ApiError(400, "invalid template archive", str(exc)) from None
    try:
        tmpl, version = await call.cd.store.create_template_version(
            name, description, call.user.id, version_name, call.request.body, tags
        )
    except Conflict:
        raise ApiError(409, "that version name exists for this template") from None
    return answer(201, t.TemplatePushed(views.template(tmpl), views.version(version), files))


ROUTES = [
    Route("GET", "/templates", list_templates, AUTHENTICATED, "List templates",
          returns=[t.Template]),
    Route("GET", "/templates/{template}", get_template, AUTHENTICATED, "A template (id or name)",
          returns=t.Template),
    Route(
        "GET", "/templates/{template}/versions", list_versions, AUTHENTICATED,
        "A template's versions",
        returns=[t.TemplateVersion],
    ),
    Route(
        "POST", "/templates/{template}/versions", push_version, Role.TEMPLATE_ADMIN,
        "Push a new version (a tar of .tf files) and make it active; creates the template "
        "if needed. Query: description, version, tag=k=v (repeatable: provisioner tags).",
        raw_body="application/x-tar", max_body=MAX_UPLOAD, responses={201: "created"},
        returns=t.TemplatePushed,
    ),
]
