"""Open the configured backend: migrate it and pair it with its pubsub."""

from __future__ import annotations

import os
from dataclasses import dataclass

from coderd.pubsub import MemoryPubsub, Pubsub
from coderd.store.aiobridge import AsyncioThread
from coderd.store.base import Store, StoreError
from coderd.store.sql import SqlStore

SQLITE_FILE = "burrow.db"


@dataclass
class Opened:
    store: Store
    pubsub: Pubsub
    migrations_applied: list[int]

    async def aclose(self) -> None:
        await self.pubsub.aclose()
        await self.store.close()


async def open_store(
    *, postgres_url: str | None = None, data_dir: str | None = None, pool_size: int = 4
) -> Opened:
    """Open PostgreSQL at ``postgres_url``, else SQLite in ``data_dir``; apply migrations.

    Raises:
        StoreError: the database cannot be opened or migrated.
    """
    bridge = AsyncioThread("burrow-db")
    try:
        if postgres_url:
            from coderd.store.postgres import PostgresDatabase, PostgresPubsub

            pg = await bridge.run(lambda: PostgresDatabase.open(postgres_url, pool_size))
            applied = await bridge.run(pg.migrate)
            pubsub: Pubsub = await PostgresPubsub.open(bridge, pg, postgres_url)
            return Opened(SqlStore(pg, bridge), pubsub, applied)
        if not data_dir:
            raise StoreError("no database: give a data directory or a PostgreSQL URL")
        from coderd.store.sqlite import SqliteDatabase

        try:
            os.makedirs(data_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {data_dir}: {exc}") from exc
        path = os.path.join(data_dir, SQLITE_FILE)
        lite = await bridge.run(lambda: SqliteDatabase.open(path))
        applied = await bridge.run(lite.migrate)
        return Opened(SqlStore(lite, bridge), MemoryPubsub(), applied)
    except BaseException:
        await bridge.aclose()
        raise
