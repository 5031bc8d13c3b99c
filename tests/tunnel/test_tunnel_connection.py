"""The reliability state machine, driven by hand over a simulated lossy link
(virtual time, seeded randomness): no trio, no sockets."""

from __future__ import annotations

import hashlib
import heapq
import random

import pytest

from tunnel.connection import Config, Connection, StreamRequest


class Sim:
    """Two connections joined by a link that drops, duplicates and reorders."""

    def __init__(self, loss: float, seed: int = 1, config: Config | None = None) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.now = 0.0
        self.a = Connection(local_is_low=True, now=0.0, config=config)
        self.b = Connection(local_is_low=False, now=0.0, config=config)
        self.queue: list[tuple[float, int, int, bytes]] = []
        self.seq = 0
        self.delivered = 0

    def _send(self, dst: int, pkts: list[bytes]) -> None:
        for p in pkts:
            if self.rng.random() < self.loss:
                continue
            copies = 2 if self.rng.random() < self.loss / 2 else 1
            for _ in range(copies):
                delay = 0.001 + self.rng.random() * 0.003
                self.seq += 1
                heapq.heappush(self.queue, (self.now + delay, self.seq, dst, p))

    def step(self) -> None:
        self._send(1, self.a.poll(self.now))
        self._send(0, self.b.poll(self.now))
        deadline = min(self.a.next_deadline(), self.b.next_deadline())
        if self.queue and self.queue[0][0] <= deadline:
            t, _, dst, p = heapq.heappop(self.queue)
            self.now = max(self.now, t)
            (self.b if dst else self.a).receive(p, self.now)
        else:
            self.now = max(self.now, deadline)
            self.a.on_timer(self.now)
            self.b.on_timer(self.now)


def accept_all(c: Connection) -> None:
    for ev in c.take_events():
        if isinstance(ev, StreamRequest):
            c.accept(ev.sid)


@pytest.mark.parametrize("loss", [0.0, 0.01, 0.05, 0.10])
def test_streams_arrive_intact_over_lossy_link(loss: float) -> None:
    sim = Sim(loss, seed=7)
    rng = random.Random(3)
    payloads = [rng.randbytes(300_000 + i * 1000) for i in range(3)]
    sids = [sim.a.open_stream(f"tcp:{i}") for i in range(3)]
    pos = [0, 0, 0]
    got: dict[int, bytearray] = {}
    eof: set[int] = set()
    for _ in range(200_000):
        accept_all(sim.b)
        for i, sid in enumerate(sids):
            st = sim.a.streams.get(sid)
            if st is None or st.phase.value != "open":
                continue
            if pos[i] < len(payloads[i]):
                pos[i] += sim.a.write(sid, payloads[i][pos[i] : pos[i] + 100_000])
                if pos[i] == len(payloads[i]):
                    sim.a.send_eof(sid)
        for sid, st in list(sim.b.streams.items()):
            data = sim.b.read(sid, 1 << 20)
            got.setdefault(sid, bytearray()).extend(data)
            if st.at_eof():
                eof.add(sid)
                sim.b.send_eof(sid)
        if len(eof) == 3 and not sim.a.streams and not sim.b.streams:
            break
        sim.step()
    else:
        pytest.fail("transfer did not finish")
    assert not sim.a.dead
    assert not sim.b.dead
    for i, sid in enumerate(sids):
        assert hashlib.sha256(got[sid]).digest() == hashlib.sha256(payloads[i]).digest()
    if loss:
        assert sim.a.stats["packets_lost"] > 0
