"""The aiosqlite adapter: the only module that imports aiosqlite.

One connection in WAL mode, in autocommit mode with explicit ``BEGIN``s.
Transactions are serialised by an asyncio lock: SQLite has a single writer
anyway, and one connection keeps ``BEGIN IMMEDIATE`` free of busy errors.
The data directory belongs to one server process: a second process on the
same file is not supported (use PostgreSQL for several replicas).
Runs on the store's asyncio thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiosqlite

from coderd.store.base import Conflict, StoreError
from coderd.store.db import Row, apply_migrations

T = TypeVar("T")


class _SqliteTx:
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fetchone(self, sql: str, *params: Any) -> Row | None:
        rows = await self.fetchall(sql, *params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, *params: Any) -> list[Row]:
        try:
            async with self._conn.execute(sql, params) as cur:
                names = [d[0] for d in cur.description or ()]
                return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    async def execute(self, sql: str, *params: Any) -> int:
        try:
            async with self._conn.execute(sql, params) as cur:
                return int(cur.rowcount)
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc


class SqliteDatabase:
    """A SQLite file (or ``:memory:``) behind one serialised connection."""

    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> SqliteDatabase:
        """Open (creating) the database file.  Raises StoreError if it cannot."""
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open sqlite database {path}: {exc}") from exc
        return cls(conn)

    async def transaction(self, fn: Callable[[_SqliteTx], Awaitable[T]], *, write: bool) -> T:
        async with self._lock:
            if not write:
                # Reads skip BEGIN/COMMIT (two thread hops each): this connection is
                # the only one to the file and the lock serialises it, so nothing
                # can commit between a read's statements anyway.
                try:
                    return await fn(_SqliteTx(self._conn))
                except sqlite3.Error as exc:
                    raise StoreError(f"sqlite: {exc}") from exc
            try:
                await self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                result = await fn(_SqliteTx(self._conn))
                await self._conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    await asyncio.shield(self._conn.execute("ROLLBACK"))
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"sqlite: {exc}") from exc
                raise
            return result

    async def migrate(self) -> list[int]:
        return await self.transaction(apply_migrations, write=True)

    async def close(self) -> None:
        await self._conn.close()
