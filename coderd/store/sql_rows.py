"""Row converters and shared SQL helpers for :class:`coderd.store.sql.SqlStore`.

Each ``_name`` converter turns a database row into the dataclass of
``coderd.store.base`` whose fields are the row's columns; the ``_insert_*``
and ``_job_row`` helpers are statements used by more than one resource.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from coderd.store.base import (
    Agent,
    AgentLogLine,
    ApiKey,
    Build,
    Daemon,
    Job,
    LogLine,
    NotFound,
    Resource,
    Template,
    TemplateVersion,
    User,
    Workspace,
)
from coderd.store.db import Row, Tx

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
