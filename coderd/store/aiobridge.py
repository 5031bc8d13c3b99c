"""The one door from trio into asyncio, for the database drivers.

aiosqlite and psycopg's AsyncConnection are asyncio libraries.  Rather than
run coderd inside trio-asyncio's loop (which must be opened around every task
tree that touches the database, and costs ~2x per query), each store owns one
plain asyncio event loop in a daemon thread.  A trio task hands it a
coroutine with :meth:`AsyncioThread.run` and sleeps on a ``trio.Event`` that
the asyncio side sets through the trio token when the coroutine is done.  One
thread hop per call; the whole transaction runs on the asyncio side, so a
store call that does several queries crosses the boundary only once.

Cancelling the trio side only stops the wait: the asyncio coroutine runs to
completion (commit or rollback) on its own.  Cancelling a driver call halfway
(e.g. between ``BEGIN`` being queued and its ``try``) can leave a connection
inside a transaction, and store calls are short, so they are never cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class AsyncioThread:
    """An asyncio event loop running in its own thread."""

    def __init__(self, name: str) -> None:
        # The loop is created inside its own thread: trio-asyncio (used by other
        # parts of burrow) patches asyncio.new_event_loop to refuse to run from
        # a trio thread, and a plain thread is no trio thread.
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        self._closed = False

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._ready.set()
        loop.run_forever()
        loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    async def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``make()`` on the asyncio loop and return its result (or raise its error).

        Raises:
            trio.ClosedResourceError: the loop was stopped.
        """
        if self._closed:
            raise trio.ClosedResourceError("database thread is closed")
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        fut = asyncio.run_coroutine_threadsafe(make(), self.loop)
        fut.add_done_callback(wake)
        await done.wait()
        return fut.result()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Schedule a plain function on the asyncio loop (thread-safe)."""
        if not self._closed:
            self.loop.call_soon_threadsafe(fn)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        await trio.to_thread.run_sync(self._thread.join)
