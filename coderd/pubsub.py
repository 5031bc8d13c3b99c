"""Pubsub inside coderd: job posted, job logs, build updated, agent state.

Messages are *hints* ("something changed, re-read the database"), never the
data itself: a subscriber whose buffer is full loses messages (counted in
``dropped``), and must not lose correctness by it.  Two implementations with
one interface: :class:`MemoryPubsub` (in-process, for SQLite: one replica)
and the Postgres LISTEN/NOTIFY one in ``coderd/store/postgres.py`` (across
replicas).

Usage::

    async with pubsub.subscribe("jobs") as sub:
        async for message in sub:
            ...
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from types import TracebackType

import trio

SUBSCRIBER_BUFFER = 256

# Channel names used across coderd (keep them short: Postgres allows 63 bytes).
JOBS = "jobs"  # a job was enqueued (or released): daemons try acquire_job


def job_logs_channel(job_id: str) -> str:
    """New log lines or a state change of one job."""
    return f"job:{job_id}"


class Fanout:
    """Delivers a message to every local subscriber of a channel (trio side)."""

    def __init__(self) -> None:
        self._subs: dict[str, set[trio.MemorySendChannel[str]]] = {}
        # Set once the backend listens on the channel; later subscribers wait on it.
        self.ready: dict[str, trio.Event] = {}
        self.dropped = 0

    def add(self, channel: str, send: trio.MemorySendChannel[str]) -> bool:
        """Register; True if this is the channel's first local subscriber."""
        subs = self._subs.setdefault(channel, set())
        subs.add(send)
        return len(subs) == 1

    def remove(self, channel: str, send: trio.MemorySendChannel[str]) -> bool:
        """Unregister; True if that was the channel's last local subscriber."""
        subs = self._subs.get(channel)
        if subs is None or send not in subs:
            return False
        subs.discard(send)
        if not subs:
            del self._subs[channel]
            self.ready.pop(channel, None)
            return True
        return False

    def deliver(self, channel: str, message: str) -> None:
        for send in list(self._subs.get(channel, ())):
            try:
                send.send_nowait(message)
            except trio.WouldBlock:
                self.dropped += 1
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self.remove(channel, send)


class Subscription:
    """An async iterator of one channel's messages; also an async context manager."""

    def __init__(
        self,
        fanout: Fanout,
        channel: str,
        on_first: Callable[[str], Awaitable[None]],
        on_last: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.channel = channel
        self._fanout = fanout
        self._on_first = on_first
        self._on_last = on_last
        self._send, self._recv = trio.open_memory_channel[str](SUBSCRIBER_BUFFER)
        self._open = False

    async def __aenter__(self) -> Subscription:
        if not self._open:
            self._open = True
            if self._fanout.add(self.channel, self._send):
                ready = self._fanout.ready[self.channel] = trio.Event()
                try:
                    await self._on_first(self.channel)
                finally:
                    ready.set()
            else:
                event = self._fanout.ready.get(self.channel)
                if event is not None:
                    await event.wait()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        last = self._fanout.remove(self.channel, self._send)
        self._send.close()
        if last and self._on_last is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._on_last(self.channel)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> str:
        if not self._open:
            await self.__aenter__()
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None


class Pubsub(abc.ABC):
    """Publish short text messages on named channels; subscribe to them."""

    @abc.abstractmethod
    async def publish(self, channel: str, message: str = "") -> None:
        """Send ``message`` to every subscriber of ``channel`` (on every replica)."""

    @abc.abstractmethod
    def subscribe(self, channel: str) -> Subscription:
        """A subscription; messages published after it is entered are received."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources (the Postgres listener connection)."""


class MemoryPubsub(Pubsub):
    """In-process pubsub for a single replica (SQLite)."""

    def __init__(self) -> None:
        self.fanout = Fanout()

    async def publish(self, channel: str, message: str = "") -> None:
        self.fanout.deliver(channel, message)

    def subscribe(self, channel: str) -> Subscription:
        return Subscription(self.fanout, channel, _nothing)


async def _nothing(channel: str) -> None:
    return None
