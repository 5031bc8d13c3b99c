"""Agent script logs and agent options (migration 0005): store and API, both backends."""

from __future__ import annotations

from coderd.builds import agent_options, on_job_completed
from coderd.store.base import AgentLogLine
from coderd.store.factory import Opened
from tests.coderd.apihelp import MAIN_TF, Api, tar_of


async def _agent_token(api: Api, agent: dict[str, object]) -> str:
    await api.setup_owner()
    r = await api.call("POST", "/templates/local/versions", raw=tar_of({"main.tf": MAIN_TF}),
                       headers={"Content-Type": "application/x-tar"})
    assert r.status == 201, r.body
    await api.call("POST", "/workspaces", {"name": "dev", "template": "local"})
    job = await api.cd.store.acquire_job("d", {})
    assert job is not None
    done = await api.cd.store.complete_job(
        job.id, result={"resources": [], "agents": [agent]}, error=None)
    await on_job_completed(done)
    return str(job.input["agent_token"])


def test_agent_options_take_known_keys_with_the_right_types() -> None:
    assert agent_options({"shutdown_script": "x", "startup_script_timeout": 5,
                          "start_blocks_login": True, "other": 1}) == {
        "shutdown_script": "x", "startup_script_timeout": 5.0, "start_blocks_login": True}
    assert agent_options({"startup_script_timeout": "2.5", "start_blocks_login": "false"}) == {
        "startup_script_timeout": 2.5, "start_blocks_login": False}
    assert agent_options({"shutdown_script": 3, "startup_script_timeout": -1,
                          "start_blocks_login": "yes"}) == {}
    assert agent_options({"startup_script_timeout": "soon"}) == {}


async def test_store_keeps_agent_logs_in_order_up_to_the_cap(opened: Opened, api: Api) -> None:
    await _agent_token(api, {"name": "main"})
    ws = (await api.call("GET", "/workspaces/dev")).body
    agent_id = ws["latest_build"]["agents"][0]["id"]
    store = opened.store
    lines = [AgentLogLine(output=f"line {i}", created_at=100.0 + i) for i in range(5)]
    assert await store.append_agent_logs(agent_id, lines, max_lines=7) == 5
    assert await store.append_agent_logs(
        agent_id, [AgentLogLine(output="bye", source="shutdown_script")] * 4, max_lines=7) == 2
    got = await store.get_agent_logs(agent_id)
    assert [g.output for g in got] == [f"line {i}" for i in range(5)] + ["bye", "bye"]
    assert got[0].created_at == 100.0
    assert got[-1].source == "shutdown_script"
    assert [g.id for g in got] == sorted(g.id for g in got)
    after = await store.get_agent_logs(agent_id, after_id=got[4].id, limit=1)
    assert [a.output for a in after] == ["bye"]
    assert await store.get_agent_logs("no-such-agent") == []


async def test_api_agent_posts_logs_owner_reads_them_manifest_has_options(api: Api) -> None:
    token = await _agent_token(api, {
        "name": "main", "startup_script": "echo hi", "shutdown_script": "echo bye",
        "startup_script_timeout": 7, "start_blocks_login": True})
    hdr = {"Burrow-Agent-Token": token}
    r = await api.call("GET", "/workspaceagents/me/manifest", token=None, headers=hdr)
    assert r.status == 200
    assert r.body["shutdown_script"] == "echo bye"
    assert r.body["startup_script_timeout"] == 7.0
    assert r.body["start_blocks_login"] is True
    r = await api.call("POST", "/workspaceagents/me/logs",
                       {"logs": [{"text": "hi", "at": 5.0}, {"text": "there"}]},
                       token=None, headers=hdr)
    assert (r.status, r.body) == (200, {"stored": 2, "dropped": 0})
    r_agent = (await api.call("GET", "/workspaces/dev")).body
    agent_id = r_agent["latest_build"]["agents"][0]["id"]
    r = await api.call("GET", f"/workspaceagents/{agent_id}/logs")
    assert [(x["text"], x["source"]) for x in r.body["logs"]] == [
        ("hi", "startup_script"), ("there", "startup_script")]
    first = r.body["logs"][0]["id"]
    r = await api.call("GET", f"/workspaceagents/{agent_id}/logs", query={"after": [str(first)]})
    assert [x["text"] for x in r.body["logs"]] == ["there"]
    bad = [
        {"logs": "hi"},
        {"logs": [{"text": 1}]},
        {"logs": [{"text": "x", "at": "now"}]},
        {"logs": [{"text": "x", "level": "info"}]},
        {"logs": [{"text": "x" * 20000}]},
        {"logs": [{"text": "x"}] * 1001},
        {"logs": [], "source": "elsewhere"},
    ]
    for body in bad:
        r = await api.call("POST", "/workspaceagents/me/logs", body, token=None, headers=hdr)
        assert r.status == 400, body
    assert (await api.call("GET", f"/workspaceagents/{agent_id}/logs",
                           query={"after": ["x"]})).status == 400
    assert (await api.call("GET", "/workspaceagents/nope/logs")).status == 404
    # a member who does not own the workspace sees nothing
    member = await api.make_user("bob")
    r = await api.call("GET", f"/workspaceagents/{agent_id}/logs", token=member)
    assert r.status == 404
    # a user token is no agent token
    r = await api.call("POST", "/workspaceagents/me/logs", {"logs": []})
    assert r.status == 401
