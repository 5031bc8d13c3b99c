"""What the SQL store needs from a database driver adapter.

The adapters (``sqlite.py``, ``postgres.py``) run on the store's asyncio
thread (see ``aiobridge.py``).  Queries are written once, with ``?``
placeholders; the Postgres adapter rewrites them to ``%s``.  A whole
:meth:`Database.transaction` callback runs on the asyncio side, so a store
method crosses from trio once however many queries it makes.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Row = dict[str, Any]


class Tx(Protocol):
    """One open transaction.

    Errors: ``Conflict`` on a uniqueness/foreign-key violation, ``StoreError``
    for any other database error.
    """

    dialect: str  # "sqlite" | "postgres"

    async def fetchone(self, sql: str, *params: Any) -> Row | None: ...

    async def fetchall(self, sql: str, *params: Any) -> list[Row]: ...

    async def execute(self, sql: str, *params: Any) -> int:
        """Run a statement; returns the number of rows it changed."""


MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)"
)


async def apply_migrations(tx: Tx) -> list[int]:
    """Apply, inside ``tx``, every shipped migration newer than the recorded ones."""
    await tx.execute(MIGRATIONS_TABLE)
    done = {int(r["version"]) for r in await tx.fetchall("SELECT version FROM schema_migrations")}
    applied: list[int] = []
    for version, name, sql in migrations(tx.dialect):
        if version in done:
            continue
        for statement in split_statements(sql):
            await tx.execute(statement)
        await tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", version, name
        )
        applied.append(version)
    return applied


class Database(Protocol):
    dialect: str

    async def transaction(self, fn: Callable[[Tx], Awaitable[T]], *, write: bool) -> T:
        """Run ``fn`` in one transaction: commit if it returns, roll back if it raises.

        ``write`` transactions on SQLite take the write lock up front
        (``BEGIN IMMEDIATE``) so read-then-write steps are atomic.
        """
        ...

    async def migrate(self) -> list[int]:
        """Apply the shipped migrations not yet applied; returns the versions applied.

        Safe with several replicas starting at once (Postgres takes an
        advisory lock; SQLite's write lock serialises).
        """
        ...

    async def close(self) -> None: ...


def migrations(dialect: str) -> list[tuple[int, str, str]]:
    """The numbered migrations shipped for ``dialect``: ``(version, name, sql)``, in order."""
    root = importlib.resources.files("coderd.store") / "migrations" / dialect
    found: list[tuple[int, str, str]] = []
    for entry in root.iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        version = int(name.split("_", 1)[0])
        found.append((version, name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"{dialect} migrations are not numbered 1..n: {versions}")
    return found


def split_statements(script: str) -> list[str]:
    """Split a migration into statements at ``;`` line ends (no procedural SQL here)."""
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    text = "\n".join(lines)
    parts = (s.strip().rstrip(";").strip() for s in text.split(";\n"))
    return [p for p in parts if p]
