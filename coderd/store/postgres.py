"""The psycopg adapter: the only module that imports psycopg.

A small fixed pool of ``AsyncConnection``s in autocommit mode, each
transaction an explicit ``conn.transaction()`` block, plus one listener
connection for LISTEN/NOTIFY pubsub.  Runs on the store's asyncio thread;
:class:`PostgresPubsub` is the trio-side face of the listener.

The listener loop waits for notifications in short slices
(``notifies(timeout=...)``) under a lock, so that ``LISTEN`` for a new
channel can slip in between slices; a subscriber waits until its ``LISTEN``
is done, so it never misses a message published after it subscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import trio
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from coderd.pubsub import Fanout, Pubsub, Subscription
from coderd.store.aiobridge import AsyncioThread
from coderd.store.base import Conflict, StoreError
from coderd.store.db import Row, Tx, apply_migrations

T = TypeVar("T")
MIGRATION_LOCK = 0x6275_7272  # "burr": one replica migrates at a time
LISTEN_SLICE = 0.05

_Conn = psycopg.AsyncConnection[dict[str, Any]]


def _msg(exc: BaseException) -> str:
    """libpq's multi-line messages as one line."""
    return " ".join(str(exc).split())


def _pg(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class _PgTx:
    dialect = "postgres"

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn

    async def _run(self, sql: str, params: tuple[Any, ...]) -> psycopg.AsyncCursor[Row]:
        try:
            return await self._conn.execute(_pg(sql) if params else sql, params or None)
        except psycopg.errors.IntegrityError as exc:
            raise Conflict(_msg(exc)) from exc
        except psycopg.Error as exc:
            raise StoreError(f"postgres: {_msg(exc)}") from exc

    async def fetchone(self, sql: str, *params: Any) -> Row | None:
        rows = await self.fetchall(sql, *params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, *params: Any) -> list[Row]:
        cur = await self._run(sql, params)
        return [_fix(r) for r in await cur.fetchall()]

    async def execute(self, sql: str, *params: Any) -> int:
        cur = await self._run(sql, params)
        return int(cur.rowcount)


def _fix(row: Row) -> Row:
    return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in row.items()}


class PostgresDatabase:
    """A pool of connections to one PostgreSQL database."""

    dialect = "postgres"

    def __init__(self, url: str, size: int) -> None:
        self._url = url
        self._idle: asyncio.Queue[_Conn | None] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(None)  # connect lazily
        self._all: list[_Conn] = []

    @classmethod
    async def open(cls, url: str, size: int = 4) -> PostgresDatabase:
        """Connect once to check the URL.  Raises StoreError if it cannot."""
        db = cls(url, size)
        conn = await db._idle.get()
        conn = await db._connect()
        db._idle.put_nowait(conn)
        return db

    async def _connect(self) -> _Conn:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, row_factory=dict_row
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to postgres: {_msg(exc)}") from exc
        self._all.append(conn)
        return conn

    async def transaction(self, fn: Callable[[Tx], Awaitable[T]], *, write: bool) -> T:
        conn = await self._idle.get()
        try:
            if conn is None or conn.closed:
                conn = await self._connect()
            try:
                async with conn.transaction():
                    return await fn(_PgTx(conn))
            except psycopg.Error as exc:
                raise StoreError(f"postgres: {_msg(exc)}") from exc
        finally:
            self._idle.put_nowait(conn)

    async def migrate(self) -> list[int]:
        async def locked(tx: Tx) -> list[int]:
            await tx.fetchone("SELECT pg_advisory_xact_lock(?)", MIGRATION_LOCK)
            return await apply_migrations(tx)

        return await self.transaction(locked, write=True)

    async def close(self) -> None:
        for conn in self._all:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


class _Listener:
    """The LISTEN connection (asyncio side)."""

    def __init__(self, conn: _Conn, deliver: Callable[[str, str], None]) -> None:
        self._conn = conn
        self._deliver = deliver
        self._lock = asyncio.Lock()
        self._channels: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            async with self._lock:
                try:
                    async for n in self._conn.notifies(timeout=LISTEN_SLICE):
                        self._deliver(n.channel, n.payload)
                except psycopg.Error:
                    await asyncio.sleep(0.5)  # connection trouble: keep delivering nothing
            await asyncio.sleep(0)

    async def listen(self, channel: str) -> None:
        async with self._lock:
            if channel not in self._channels:
                await self._conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
                self._channels.add(channel)

    async def unlisten(self, channel: str) -> None:
        async with self._lock:
            if channel in self._channels:
                await self._conn.execute(
                    pgsql.SQL("UNLISTEN {}").format(pgsql.Identifier(channel))
                )
                self._channels.discard(channel)

    @property
    def channels(self) -> int:
        return len(self._channels)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await self._task
        with contextlib.suppress(psycopg.Error):
            await self._conn.close()


class PostgresPubsub(Pubsub):
    """LISTEN/NOTIFY pubsub: what one replica publishes, every replica receives."""

    def __init__(
        self, bridge: AsyncioThread, db: PostgresDatabase, listener: _Listener, fanout: Fanout
    ) -> None:
        self._bridge = bridge
        self._db = db
        self._listener = listener
        self.fanout = fanout

    @classmethod
    async def open(cls, bridge: AsyncioThread, db: PostgresDatabase, url: str) -> PostgresPubsub:
        """Open the listener connection.  Raises StoreError if it cannot connect."""
        token = trio.lowlevel.current_trio_token()
        fanout = Fanout()

        def deliver(channel: str, message: str) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(fanout.deliver, channel, message)

        async def start() -> _Listener:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    url, autocommit=True, row_factory=dict_row
                )
            except psycopg.Error as exc:
                raise StoreError(f"cannot connect to postgres: {_msg(exc)}") from exc
            listener = _Listener(conn, deliver)
            listener.start()
            return listener

        return cls(bridge, db, await bridge.run(start), fanout)

    async def publish(self, channel: str, message: str = "") -> None:
        async def notify(tx: Tx) -> None:
            await tx.fetchone("SELECT pg_notify(?, ?)", channel, message)

        await self._bridge.run(lambda: self._db.transaction(notify, write=True))

    def subscribe(self, channel: str) -> Subscription:
        async def listen(ch: str) -> None:
            await self._bridge.run(lambda: self._listener.listen(ch))

        async def unlisten(ch: str) -> None:
            await self._bridge.run(lambda: self._listener.unlisten(ch))

        return Subscription(self.fanout, channel, listen, unlisten)

    @property
    def listening(self) -> int:
        """How many channels the listener connection LISTENs on (for tests)."""
        return self._listener.channels

    async def aclose(self) -> None:
        await self._bridge.run(self._listener.close)
