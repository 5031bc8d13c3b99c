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

from coderd.store.sql_jobs import JobsSql
from coderd.store.sql_rows import ACQUIRE_SCAN, new_id
from coderd.store.sql_templates import TemplatesSql
from coderd.store.sql_users import UsersSql
from coderd.store.sql_workspaces import WorkspacesSql

__all__ = ["ACQUIRE_SCAN", "SqlStore", "new_id"]


class SqlStore(UsersSql, TemplatesSql, WorkspacesSql, JobsSql):
    """:class:`Store` over a :class:`Database` adapter on an asyncio thread.

    The methods live in one mixin per resource (``sql_users``, ``sql_templates``,
    ``sql_workspaces``, ``sql_jobs``) over :class:`~coderd.store.sql_core.SqlCore`.
    """
