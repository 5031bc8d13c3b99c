"""The trio-asyncio loop the agent's SSH adapter modules run asyncssh on.

One of the agent's SSH adapter modules (``agent/ssh_*.py``), the only modules
of the agent that touch asyncio.  asyncssh is an asyncio library; it runs on a
trio-asyncio loop (:func:`asyncio_loop`, opened once per process and reused),
so the rest of the agent stays trio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import trio_asyncio

log = logging.getLogger("burrow.agent.ssh")


@contextlib.asynccontextmanager
async def asyncio_loop() -> AsyncIterator[None]:
    """Make a trio-asyncio loop current for the block: reuse one, or open one.

    The agent's main enters this once around everything; nested entries (each
    connection does one) find that loop and cost nothing.  Without an outer
    loop each entry opens its own, which is correct but slower.
    """
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_asyncio_error)
        yield


def _log_asyncio_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # trio-asyncio's default handler re-raises into the loop's nursery, which
    # would take every connection down with one stray callback error.
    exc = context.get("exception")
    log.error("asyncio: %s", context.get("message", "error"), exc_info=exc)
