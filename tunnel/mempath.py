"""An in-memory packet network for tests and benchmarks.

Each attached node gets a ``MemoryPath``. Delivery is immediate (so
``trio.testing.wait_all_tasks_blocked`` works) but the network can drop,
duplicate and reorder datagrams with a seeded random generator: reordering
holds a datagram back and releases it after the next one to the same
destination (a held datagram with nothing after it behaves like a loss, and
may come back much later as a stale duplicate).
"""

from __future__ import annotations

import random

import trio

from tunnel.path import Datagram, PathEvent, PathReset


class MemoryNetwork:
    """Connects ``MemoryPath`` objects by node key."""

    def __init__(
        self,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder
        self.rng = random.Random(seed)
        self.paths: dict[bytes, MemoryPath] = {}
        self._held: dict[bytes, list[Datagram]] = {}
        self.up = True
        self.counts = {"sent": 0, "dropped": 0, "duplicated": 0, "reordered": 0}

    def attach(self, key: bytes, kind: str = "relay") -> MemoryPath:
        path = MemoryPath(self, key, kind)
        self.paths[key] = path
        return path

    def reset(self) -> None:
        """Tell every attached node that the path was re-established."""
        for path in self.paths.values():
            path.queue_event(PathReset())

    def _deliver(self, src: bytes, dst: bytes, data: bytes) -> None:
        self.counts["sent"] += 1
        target = self.paths.get(dst)
        if target is None or not self.up:
            self.counts["dropped"] += 1
            return
        rng = self.rng
        if rng.random() < self.loss:
            self.counts["dropped"] += 1
            return
        dgram = Datagram(src, data)
        held = self._held.setdefault(dst, [])
        if rng.random() < self.reorder:
            self.counts["reordered"] += 1
            held.append(dgram)
            return
        target.queue_event(dgram)
        if rng.random() < self.duplicate:
            self.counts["duplicated"] += 1
            target.queue_event(dgram)
        for d in held:
            target.queue_event(d)
        held.clear()


class MemoryPath:
    """A node's attachment to a ``MemoryNetwork`` (a ``PacketPath``)."""

    def __init__(self, net: MemoryNetwork, key: bytes, kind: str) -> None:
        self.net = net
        self.key = key
        self.kind = kind
        self._send, self._recv = trio.open_memory_channel[PathEvent](float("inf"))

    def queue_event(self, event: PathEvent) -> None:
        self._send.send_nowait(event)

    async def send(self, dst: bytes, data: bytes | bytearray) -> None:
        await trio.lowlevel.checkpoint()
        self.net._deliver(self.key, dst, bytes(data))

    async def receive(self) -> PathEvent:
        return await self._recv.receive()

    def close(self) -> None:
        """End this path: ``receive`` raises ``trio.EndOfChannel``."""
        self._send.close()
