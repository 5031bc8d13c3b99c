"""The transaction plumbing every SQL resource mixin builds on.

:class:`SqlCore` owns the database adapter and its asyncio thread; each
public method of the mixins is one transaction handed over with ``_tx``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from coderd.store.aiobridge import AsyncioThread
from coderd.store.base import Store
from coderd.store.db import Database, Row, Tx
from coderd.store.sql_rows import T


class SqlCore(Store):
    """Connection, bridge and the one-statement helpers shared by the SQL mixins."""

    def __init__(self, db: Database, bridge: AsyncioThread, *, owns_bridge: bool = True) -> None:
        self.backend = db.dialect
        self._db = db
        self._bridge = bridge
        self._owns_bridge = owns_bridge

    async def _tx(self, fn: Callable[[Tx], Awaitable[T]], *, write: bool = False) -> T:
        return await self._bridge.run(lambda: self._db.transaction(fn, write=write))

    # The three shapes most methods share: one read-only query whose single row
    # (or every row) is converted, or one write statement and its row count.

    async def _one(self, conv: Callable[[Row], T], sql: str, *args: Any) -> T | None:
        async def q(tx: Tx) -> T | None:
            row = await tx.fetchone(sql, *args)
            return conv(row) if row else None

        return await self._tx(q)

    async def _all(self, conv: Callable[[Row], T], sql: str, *args: Any) -> list[T]:
        async def q(tx: Tx) -> list[T]:
            return [conv(r) for r in await tx.fetchall(sql, *args)]

        return await self._tx(q)

    async def _exec(self, sql: str, *args: Any) -> int:
        async def q(tx: Tx) -> int:
            return await tx.execute(sql, *args)

        return await self._tx(q, write=True)

    async def close(self) -> None:
        await self._bridge.run(self._db.close)
        if self._owns_bridge:
            await self._bridge.aclose()
