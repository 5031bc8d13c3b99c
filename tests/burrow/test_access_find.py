"""burrow.access.connect.find_agent against a scripted API client, and the Progress line."""

from __future__ import annotations

import io
from typing import Any

import pytest
import trio

from burrow.access.connect import AccessError, Target, find_agent, lifecycle_warning
from burrow.access.progress import Progress
from burrow.api_client import ApiError


class FakeClient:
    """Answers ``workspace()`` from a script of states, one per call."""

    def __init__(self, states: list[dict[str, Any]]) -> None:
        self.states = states
        self.calls = 0
        self.log_calls = 0

    async def workspace(self, ref: str) -> dict[str, Any]:
        state = self.states[min(self.calls, len(self.states) - 1)]
        self.calls += 1
        if state.get("missing"):
            raise ApiError(404, "workspace not found")
        return {"id": "w1", "name": "dev", **state}

    async def build_logs(self, build_id: str, after: int = 0, wait: float = 0) -> dict[str, Any]:
        self.log_calls += 1
        return {"logs": [{"id": after + 1, "output": f"terraform line {after + 1}"}],
                "done": False, "status": "running"}


AGENT = {"id": "a1", "name": "main", "lifecycle_state": "ready", "status": "connected"}


def running(*agents: dict[str, Any]) -> dict[str, Any]:
    return {"status": "running", "latest_build": {"id": "b1", "agents": list(agents)}}


async def test_waits_through_pending_and_starting_showing_the_log_tail(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = FakeClient([
        {"status": "pending", "latest_build": {"id": "b1"}},
        {"status": "starting", "latest_build": {"id": "b1"}},
        running(AGENT),
    ])
    out = io.StringIO()
    target = await find_agent(client, "dev", progress=Progress(out))  # type: ignore[arg-type]
    assert target == Target("dev", "w1", "a1", "main", "ready", "connected")
    text = out.getvalue()
    assert "burrow: workspace dev is pending..." in text
    assert "burrow: workspace dev is starting..." in text
    assert "terraform line 1" in text
    assert client.log_calls == 2


@pytest.mark.parametrize(("state", "says"), [
    ({"status": "stopped", "latest_build": {}}, "is stopped; start it with `burrow start dev`"),
    ({"status": "failed", "latest_build": {}}, "is failed"),
    (running(), "has no agent"),
    (running(AGENT, {**AGENT, "id": "a2", "name": "side"}), "several agents (main, side)"),
    ({"missing": True}, "workspace not found"),
])
async def test_unreachable_states_are_one_line_access_errors(state: dict[str, Any],
                                                             says: str) -> None:
    with pytest.raises(AccessError) as info:
        await find_agent(FakeClient([state]), "dev")  # type: ignore[arg-type]
    assert says in str(info.value)
    assert "\n" not in str(info.value)


async def test_agent_by_name_and_timeout(autojump_clock: trio.testing.MockClock) -> None:
    two = running(AGENT, {**AGENT, "id": "a2", "name": "side"})
    target = await find_agent(FakeClient([two]), "dev", agent="side")  # type: ignore[arg-type]
    assert target.agent_id == "a2"
    with pytest.raises(AccessError, match="has no agent named 'x'"):
        await find_agent(FakeClient([two]), "dev", agent="x")  # type: ignore[arg-type]
    with pytest.raises(AccessError, match="still starting after 5 s"):
        await find_agent(FakeClient([{"status": "starting", "latest_build": {}}]), "dev",
                         timeout=5)  # type: ignore[arg-type]


def test_lifecycle_warning() -> None:
    assert lifecycle_warning(Target("dev", "w", "a", "main", "ready")) is None
    warn = lifecycle_warning(Target("dev", "w", "a", "main", "start_timeout"))
    assert warn is not None
    assert "timed out (start_timeout)" in warn


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_spinner_on_a_tty_and_plain_lines_otherwise() -> None:
    tty = FakeTTY()
    p = Progress(tty)
    p.update("waiting\nfor agent", "log\rline")
    p.update("waiting\nfor agent", "log\rline")
    p.done()
    text = tty.getvalue()
    assert text.count("\r\x1b[K") == 3
    assert "waiting for agent  | log line" in text
    assert "\n" not in text
    plain = io.StringIO()
    p = Progress(plain)
    p.update("waiting")
    p.update("waiting")  # not repeated
    p.update("waiting", "detail")
    p.done()
    assert plain.getvalue() == "burrow: waiting\n  detail\n"
    quiet = io.StringIO()
    Progress(quiet, quiet=True).update("x")
    assert quiet.getvalue() == ""


class WatchClient:
    def __init__(self, logs: Any) -> None:
        self.logs = logs
        self.queries: list[dict[str, str]] = []

    async def workspace(self, ref: str) -> dict[str, Any]:
        return running({**AGENT, "status": "connecting", "lifecycle_state": "starting"})

    async def request(self, method: str, path: str, *, query: dict[str, str]) -> Any:
        assert path == "/workspaceagents/a1/logs"
        self.queries.append(query)
        if isinstance(self.logs, Exception):
            raise self.logs
        return self.logs


async def test_agent_watch_shows_state_and_startup_log_tail() -> None:
    from burrow.access.connect import _AgentWatch

    target = Target("dev", "w1", "a1", "main")
    client = WatchClient({"logs": [{"id": 4, "text": "npm install"},
                                   {"id": 5, "text": "listening on 3000"}, "junk"]})
    watch = _AgentWatch(client, target)  # type: ignore[arg-type]
    await watch.refresh()
    assert watch.state == " (agent: connecting, starting)"
    assert watch.log_tail == "listening on 3000"
    await watch.refresh()
    assert client.queries == [{"after": "0"}, {"after": "5"}]
    # a server without the logs route: asked once, then never again
    old = WatchClient(ApiError(404, "not found"))
    watch = _AgentWatch(old, target)  # type: ignore[arg-type]
    await watch.refresh()
    await watch.refresh()
    assert len(old.queries) == 1
    assert watch.log_tail == ""
