"""burrow.access.connect's WorkspaceConnection following the agent's announcements
(issue 12 item 1: the same node announced again must not restart an open)."""

from __future__ import annotations

import pytest
import trio

from burrow.access.connect import AccessError, Target, WorkspaceConnection
from derp.keys import generate_private_key
from peer.conn import PeerConn
from peer.messages import Node
from tunnel.errors import TunnelError

AGENT = bytes(32 * [1])
TARGET = Target("dev", "w1", "a1", "main")


class FakeOpens:
    """Stands in for Endpoint.open_stream: each open takes ``delay`` then answers."""

    def __init__(self, delay: float, outcomes: list[object]) -> None:
        self.delay = delay
        self.outcomes = outcomes
        self.started: list[bytes] = []
        self.cancelled = 0

    async def __call__(self, key: bytes, service: str) -> object:
        self.started.append(key)
        try:
            await trio.sleep(self.delay)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _conn(monkeypatch: pytest.MonkeyPatch, opens: FakeOpens) -> WorkspaceConnection:
    peer = PeerConn(generate_private_key())
    monkeypatch.setattr(peer.endpoint, "open_stream", opens)
    return WorkspaceConnection(TARGET, peer, Node(AGENT, 1), rejoin_timeout=5)


async def test_the_same_node_announced_again_does_not_reopen(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    opens = FakeOpens(2.0, ["stream"])
    conn = _conn(monkeypatch, opens)
    async with trio.open_nursery() as nursery:
        async def reannounce() -> None:
            for _ in range(3):
                await trio.sleep(0.5)
                conn.set_agent(Node(AGENT, 1, (("127.0.0.1", 5),)))  # same key, new endpoint

        nursery.start_soon(reannounce)
        assert await conn.open_stream("ssh") == "stream"
    assert opens.started == [AGENT]
    assert opens.cancelled == 0
    assert conn.agent_node.endpoints == (("127.0.0.1", 5),)


async def test_a_new_key_abandons_the_open_on_the_old_one(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    new = bytes(32 * [2])
    opens = FakeOpens(2.0, ["stream"])
    conn = _conn(monkeypatch, opens)
    async with trio.open_nursery() as nursery:
        async def restart() -> None:
            await trio.sleep(0.5)
            conn.set_agent(Node(new, 1))

        nursery.start_soon(restart)
        assert await conn.open_stream("ssh") == "stream"
    assert opens.started == [AGENT, new]
    assert opens.cancelled == 1


async def test_a_failed_open_retries_after_an_announcement_and_gives_up_without_one(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    opens = FakeOpens(0.1, [TunnelError("handshake timed out"), "stream"])
    conn = _conn(monkeypatch, opens)
    async with trio.open_nursery() as nursery:
        async def reannounce() -> None:
            await trio.sleep(1.0)
            conn.set_agent(Node(AGENT, 1))  # the agent restarted with its persisted key

        nursery.start_soon(reannounce)
        assert await conn.open_stream("ssh") == "stream"
    assert opens.started == [AGENT, AGENT]
    opens = FakeOpens(0.1, [TunnelError("handshake timed out")])
    conn = _conn(monkeypatch, opens)
    with pytest.raises(AccessError, match="dev: ssh: handshake timed out"):
        await conn.open_stream("ssh")
