"""The /api/v2 routes, in process, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import time

import trio

from coderd.api.router import AGENT, PUBLIC
from coderd.builds import on_job_completed
from coderd.store.base import LogLine, Role
from provisionerd.protocol import BuildInput
from tests.coderd.apihelp import MAIN_TF, Api, tar_of


async def test_first_user_then_login_logout(api: Api) -> None:
    r = await api.call("GET", "/users/first", token=None)
    assert r.body == {"exists": False}
    await api.setup_owner()
    cookie = ""
    r = await api.call("GET", "/users/first", token=None)
    assert r.body == {"exists": True}
    r = await api.call(
        "POST", "/users/first",
        {"username": "evil", "email": "e@x.io", "password": "password123"}, token=None,
    )
    assert r.status == 409
    r = await api.call("GET", "/users/me")
    assert r.status == 200
    assert r.body["username"] == "admin"
    assert r.body["roles"] == ["owner"]
    assert "hashed_password" not in r.body
    r = await api.call(
        "POST", "/users/login", {"username": "admin", "password": "correct horse"}, token=None
    )
    assert r.status == 201
    cookie = r.header("set-cookie")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie
    token = r.body["session_token"]
    # the cookie alone authenticates
    r = await api.call("GET", "/users/me", token=None,
                       headers={"Cookie": f"burrow_session={token}"})
    assert r.status == 200
    r = await api.call("POST", "/users/logout", token=token)
    assert r.status == 200
    r = await api.call("GET", "/users/me", token=token)
    assert r.status == 401


async def test_cookie_is_secure_over_https(api: Api) -> None:
    await api.setup_owner()
    api.scheme = "https"
    r = await api.call(
        "POST", "/users/login", {"username": "admin", "password": "correct horse"}, token=None
    )
    assert "Secure" in r.header("set-cookie")


async def test_bad_logins_are_401(api: Api) -> None:
    await api.setup_owner()
    for username, password in [("admin", "wrong password"), ("nobody", "correct horse")]:
        r = await api.call(
            "POST", "/users/login", {"username": username, "password": password}, token=None
        )
        assert r.status == 401
        assert r.body["message"] == "incorrect username or password"


async def test_login_redirect_only_same_origin(api: Api) -> None:
    await api.setup_owner()
    good = {"username": "admin", "password": "correct horse"}
    r = await api.call("POST", "/users/login", {**good, "redirect": "/workspaces?x=1"}, token=None)
    assert r.status == 201
    assert r.header("location") == "/workspaces?x=1"
    for bad in ["https://evil.example/", "//evil.example", "/\\evil.example", "javascript:x",
                "evil", "/ok\r\nSet-Cookie: x=y"]:
        r = await api.call("POST", "/users/login", {**good, "redirect": bad}, token=None)
        assert r.status == 400, bad
        r = await api.call("POST", "/users/login", good, token=None, query={"redirect": [bad]})
        assert r.status == 400, bad


async def test_token_edge_cases(api: Api) -> None:
    await api.setup_owner()
    assert api.token is not None
    key_id, _, secret = api.token.partition("-")
    forged = f"{key_id}-{'A' * len(secret)}"
    for bad in [forged, "garbage", "-", f"{key_id}-", "x" * 500, f"{'0' * 10}-{secret}"]:
        r = await api.call("GET", "/users/me", token=bad)
        assert r.status == 401, bad
        assert set(r.body) <= {"message", "detail"}
    r = await api.call("GET", "/users/me", token=None)
    assert r.status == 401
    # an expired key
    key = await api.cd.store.get_api_key(key_id)
    assert key is not None
    await api.cd.store.delete_api_key(key_id)
    from dataclasses import replace

    await api.cd.store.insert_api_key(replace(key, expires_at=time.time() - 1))
    r = await api.call("GET", "/users/me")
    assert r.status == 401
    assert "expired" in r.body["message"]


async def test_api_tokens(api: Api) -> None:
    await api.setup_owner()
    r = await api.call("POST", "/users/me/tokens", {"name": "ci", "lifetime_seconds": 3600})
    assert r.status == 201
    token = r.body["key"]
    assert (await api.call("GET", "/users/me", token=token)).status == 200
    r = await api.call("GET", "/users/me/tokens")
    assert [t["name"] for t in r.body] == ["ci"]
    assert "key" not in r.body[0]
    assert (await api.call("DELETE", f"/users/me/tokens/{r.body[0]['id']}")).status == 204
    assert (await api.call("GET", "/users/me", token=token)).status == 401
    r = await api.call("POST", "/users/me/tokens", {"lifetime_seconds": 10**12})
    assert r.status == 400


async def test_roles_are_checked(api: Api) -> None:
    await api.setup_owner()
    owner = api.token
    member = await api.make_user("bob")
    tadmin = await api.make_user("tina", "template-admin")
    tar = tar_of({"main.tf": MAIN_TF})
    hdr = {"Content-Type": "application/x-tar"}
    r = await api.call("POST", "/templates/t1/versions", raw=tar, token=member, headers=hdr)
    assert r.status == 403
    r = await api.call("POST", "/templates/t1/versions", raw=tar, token=tadmin, headers=hdr)
    assert r.status == 201
    r = await api.call("POST", "/users",
                       {"username": "x", "email": "x@x.io", "password": "password123"},
                       token=tadmin)
    assert r.status == 403
    assert (await api.call("GET", "/users", token=member)).status == 403
    assert (await api.call("GET", "/users", token=owner)).status == 200
    assert (await api.call("GET", "/templates", token=member)).status == 200
    r = await api.call("POST", "/users",
                       {"username": "y", "email": "y@x.io", "password": "password123",
                        "roles": "superuser"}, token=owner)
    assert r.status == 400


async def test_every_route_declares_auth_and_is_in_openapi(api: Api) -> None:
    r = await api.call("GET", "/openapi.json", token=None)
    assert r.status == 200
    doc = r.body
    assert doc["openapi"].startswith("3.")
    for route in api.router.routes:
        assert route.auth in (PUBLIC, AGENT, *[x.value for x in Role]), route
        op = doc["paths"]["/api/v2" + route.path][route.method.lower()]
        assert op["x-burrow-role"] == route.auth
        assert op["summary"]
        if route.body is not None:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert set(schema["properties"]) == set(route.body)
    n_ops = sum(len(ops) for ops in doc["paths"].values())
    assert n_ops == len(api.router.routes)


async def test_template_archive_checks(api: Api) -> None:
    await api.setup_owner()
    hdr = {"Content-Type": "application/x-tar"}
    bad = {
        "traversal": tar_of({"../evil.tf": MAIN_TF}),
        "nested traversal": tar_of({"a/../../evil.tf": MAIN_TF}),
        "absolute": tar_of({"/etc/evil.tf": MAIN_TF}),
        "symlink out": tar_of({"main.tf": MAIN_TF}, links={"x.tf": "/etc/passwd"}),
        "symlink": tar_of({"main.tf": MAIN_TF}, links={"x.tf": "main.tf"}),
        "hardlink": tar_of({"main.tf": MAIN_TF}, hardlinks={"x.tf": "/etc/passwd"}),
        "no tf": tar_of({"README": b"hi"}),
        "not a tar": b"this is not a tar archive at all" * 40,
        "empty": b"",
        "too big unpacked": tar_of({"main.tf": MAIN_TF, "big": b"\0" * (17 * 1024 * 1024)}),
    }
    for name, data in bad.items():
        r = await api.call("POST", "/templates/t/versions", raw=data, headers=hdr)
        assert r.status in (400, 413), name
        assert "message" in r.body, name
    assert (await api.call("GET", "/templates")).body == []
    r = await api.call("POST", "/templates/t/versions", raw=tar_of({"main.tf": MAIN_TF}),
                       headers={"Content-Type": "application/json"})
    assert r.status == 415
    r = await api.call("POST", "/templates/Bad Name/versions", raw=tar_of({"main.tf": MAIN_TF}),
                       headers=hdr)
    assert r.status == 400
    r = await api.call("POST", "/templates/t/versions", raw=tar_of({"main.tf": MAIN_TF}),
                       headers=hdr, query={"version": ["v1.0"], "description": ["d"]})
    assert r.status == 201
    assert r.body["files"] == ["main.tf"]
    r = await api.call("POST", "/templates/t/versions", raw=tar_of({"main.tf": MAIN_TF}),
                       headers=hdr, query={"version": ["v1.0"]})
    assert r.status == 409
    r = await api.call("GET", "/templates/t/versions")
    assert [v["name"] for v in r.body] == ["v1.0"]


async def _push(api: Api, name: str = "local") -> None:
    r = await api.call("POST", f"/templates/{name}/versions", raw=tar_of({"main.tf": MAIN_TF}),
                       headers={"Content-Type": "application/x-tar"})
    assert r.status == 201, r.body


async def _run_job(api: Api, daemon: str = "d1", *, fail: str | None = None) -> str:
    store = api.cd.store
    job = await store.acquire_job(daemon, {})
    assert job is not None
    parsed = BuildInput.from_json(job.input)  # the daemon's own validation accepts it
    assert parsed.template.startswith(b"main.tf") or len(parsed.template) > 0
    await store.append_job_logs(job.id, [LogLine("terraform apply"), LogLine("done")])
    result = {
        "state": base64.b64encode(f"state-{parsed.transition}".encode()).decode(),
        "resources": [
            {"address": "terraform_data.home", "type": "terraform_data", "name": "home",
             "kind": "peripheral", "lifetime": "persistent"},
            {"address": "terraform_data.agent[0]", "type": "terraform_data", "name": "agent",
             "kind": "computational", "lifetime": "ephemeral"},
        ] if parsed.transition == "start" else [],
        "agents": [{"name": "main", "resource": "terraform_data.agent", "os": "linux",
                    "directory": "/home/x", "env": {"A": "1"}}]
        if parsed.transition == "start" else [],
    }
    done = await store.complete_job(job.id, result=None if fail else result, error=fail)
    await on_job_completed(done)
    return parsed.transition


async def test_workspace_lifecycle(api: Api) -> None:
    await api.setup_owner()
    await _push(api)
    r = await api.call("POST", "/workspaces",
                       {"name": "dev", "template": "local", "variables": {"cpu": "2"}})
    assert r.status == 201, r.body
    assert r.body["status"] == "pending"
    assert r.body["latest_build"]["transition"] == "start"
    r = await api.call("POST", "/workspaces", {"name": "dev", "template": "local"})
    assert r.status == 409
    # a second transition while the first is queued is refused
    r = await api.call("POST", "/workspaces/dev/builds", {"transition": "stop"})
    assert r.status == 409
    assert await _run_job(api) == "start"
    r = await api.call("GET", "/workspaces/dev")
    assert r.body["status"] == "running"
    build = r.body["latest_build"]
    assert build["status"] == "succeeded"
    assert {(x["name"], x["kind"], x["persistence"]) for x in build["resources"]} == {
        ("home", "peripheral", "persistent"), ("agent", "computational", "ephemeral")}
    assert [a["name"] for a in build["agents"]] == ["main"]
    assert build["agents"][0]["resource_id"] is not None
    assert await api.cd.store.get_workspace_state(r.body["id"]) == b"state-start"
    done_job = await api.cd.store.get_job(build["job_id"])
    assert done_job is not None
    assert not {"agent_token", "template", "state"} & set(done_job.input)
    assert done_job.input["transition"] == "start"
    r = await api.call("GET", f"/builds/{build['id']}/logs")
    assert [ln["output"] for ln in r.body["logs"]] == ["terraform apply", "done"]
    assert r.body["done"] is True
    # stop keeps the variables, then start again, then delete
    r = await api.call("POST", "/workspaces/dev/builds", {"transition": "stop"})
    assert r.status == 201
    assert r.body["variables"] == {"cpu": "2"}
    job = await api.cd.store.get_job(r.body["job_id"])
    assert job is not None
    assert job.input["state"] == base64.b64encode(b"state-start").decode()
    assert await _run_job(api) == "stop"
    assert (await api.call("GET", "/workspaces/dev")).body["status"] == "stopped"
    r = await api.call("POST", "/workspaces/dev/builds", {"transition": "start"})
    assert await _run_job(api) == "start"
    r = await api.call("POST", "/workspaces/dev/builds", {"transition": "delete"})
    assert await _run_job(api) == "delete"
    assert (await api.call("GET", "/workspaces")).body == []
    assert (await api.call("GET", "/workspaces/dev")).status == 404


async def test_failed_build_and_others_cannot_see(api: Api) -> None:
    await api.setup_owner()
    await _push(api)
    await api.call("POST", "/workspaces", {"name": "dev", "template": "local"})
    await _run_job(api, fail="terraform: boom")
    r = await api.call("GET", "/workspaces/dev")
    assert r.body["status"] == "failed"
    assert r.body["latest_build"]["error"] == "terraform: boom"
    ws_id = r.body["id"]
    build_id = r.body["latest_build"]["id"]
    bob = await api.make_user("bob")
    assert (await api.call("GET", f"/workspaces/{ws_id}", token=bob)).status == 404
    assert (await api.call("GET", "/workspaces/admin.dev", token=bob)).status == 404
    assert (await api.call("GET", f"/builds/{build_id}", token=bob)).status == 404
    assert (await api.call("GET", "/workspaces/admin.dev")).status == 200
    assert (await api.call("GET", "/workspaces", token=bob)).body == []
    r = await api.call("GET", "/workspaces", query={"owner": ["all"]})
    assert [w["name"] for w in r.body] == ["dev"]


async def test_cancel_pending_and_running_builds(api: Api) -> None:
    await api.setup_owner()
    await _push(api)
    r = await api.call("POST", "/workspaces", {"name": "dev", "template": "local"})
    build_id = r.body["latest_build"]["id"]
    r = await api.call("PATCH", f"/builds/{build_id}/cancel")
    assert r.status == 200
    assert r.body["status"] == "canceled"
    assert (await api.call("GET", "/workspaces/dev")).body["status"] == "canceled"
    r = await api.call("POST", "/workspaces/dev/builds", {"transition": "start"})
    job = await api.cd.store.acquire_job("d", {})
    assert job is not None
    r = await api.call("PATCH", f"/builds/{r.body['id']}/cancel")
    assert r.body["status"] == "canceling"
    assert await api.cd.store.heartbeat_job(job.id, "d") is True


async def test_logs_long_poll_wakes_on_new_lines(api: Api) -> None:
    await api.setup_owner()
    await _push(api)
    r = await api.call("POST", "/workspaces", {"name": "dev", "template": "local"})
    build_id = r.body["latest_build"]["id"]
    job = await api.cd.store.acquire_job("d", {})
    assert job is not None
    got: list[str] = []

    async def follow() -> None:
        r = await api.call("GET", f"/builds/{build_id}/logs", query={"wait": ["20"]})
        got.extend(ln["output"] for ln in r.body["logs"])

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(follow)
            await trio.sleep(0.2)
            assert got == []
            await api.cd.store.append_job_logs(job.id, [LogLine("hello")])
            await api.cd.pubsub.publish(f"job:{job.id}", "logs")
    assert got == ["hello"]
    r = await api.call("GET", f"/builds/{build_id}/logs", query={"wait": ["abc"]})
    assert r.status == 400


async def test_agent_manifest_and_relay_map(api: Api) -> None:
    await api.setup_owner()
    await _push(api)
    await api.call("POST", "/workspaces", {"name": "dev", "template": "local"})
    pending = await api.cd.store.list_workspaces(None)
    build = await api.cd.store.latest_build(pending[0].id)
    assert build is not None
    job = await api.cd.store.get_job(build.job_id)
    assert job is not None
    agent_token = job.input["agent_token"]
    hdr = {"Burrow-Agent-Token": agent_token}
    # no agent recorded until the build succeeds
    r = await api.call("GET", "/workspaceagents/me/manifest", token=None, headers=hdr)
    assert r.status == 401
    await _run_job(api)
    r = await api.call("GET", "/workspaceagents/me/manifest", token=None, headers=hdr)
    assert r.status == 200, r.body
    assert r.body["agent_name"] == "main"
    assert r.body["owner_name"] == "admin"
    assert r.body["directory"] == "/home/x"
    assert r.body["env"] == {"A": "1"}
    assert r.body["relay_map"]["regions"][0]["code"] == "primary"
    for bad in [{"Burrow-Agent-Token": agent_token + "x"}, {}]:
        r = await api.call("GET", "/workspaceagents/me/manifest", token=None, headers=bad)
        assert r.status == 401
    # a user's session token is no agent token
    r = await api.call("GET", "/workspaceagents/me/manifest")
    assert r.status == 401
    assert (await api.call("GET", "/relaymap")).status == 200
    assert (await api.call("GET", "/relaymap", token=None)).status == 401
    # after a stop the old agent token is void
    await api.call("POST", "/workspaces/dev/builds", {"transition": "stop"})
    await _run_job(api)
    r = await api.call("GET", "/workspaceagents/me/manifest", token=None, headers=hdr)
    assert r.status == 401


async def test_metrics_render_latency_by_route(api: Api) -> None:
    from coderd.metrics import render

    await api.setup_owner()
    for _ in range(3):
        assert (await api.call("GET", "/users/me")).status == 200
    assert (await api.call("GET", "/nope")).status == 404
    text = render(api.cd.metrics, jobs_by_status=await api.cd.store.count_jobs_by_status(),
                  daemons_connected=2, derp={"clients_connected": 1, "drops": {"queue_full": 4}})
    assert ('burrow_api_request_duration_seconds_count{method="GET",route="/users/me",'
            'code="200"} 3') in text
    assert 'route="unmatched",code="404"' in text
    assert 'burrow_provisioner_jobs{status="pending"} 0' in text
    assert "burrow_provisioner_daemons_connected 2" in text
    assert 'burrow_derp_drops{reason="queue_full"} 4' in text
    assert "# TYPE burrow_derp_clients_connected gauge" in text


async def test_template_tags_route_jobs_to_matching_daemons(api: Api) -> None:
    await api.setup_owner()
    hdr = {"Content-Type": "application/x-tar"}
    tar = tar_of({"main.tf": MAIN_TF})
    r = await api.call("POST", "/templates/t/versions", raw=tar, headers=hdr,
                       query={"tag": ["zone=eu", "gpu=yes"]})
    assert r.status == 201
    assert r.body["version"]["tags"] == {"zone": "eu", "gpu": "yes"}
    for bad in (["nokey"], ["=v"], ["k="], ["a b=c"], [f"k{i}=v" for i in range(17)]):
        r = await api.call("POST", "/templates/t/versions", raw=tar, headers=hdr,
                           query={"tag": bad})
        assert r.status == 400, bad
    r = await api.call("POST", "/workspaces", {"name": "dev", "template": "t"})
    job_id = r.body["latest_build"]["job_id"]
    assert await api.cd.store.acquire_job("plain", {}) is None
    assert await api.cd.store.acquire_job("eu-only", {"zone": "eu"}) is None
    job = await api.cd.store.acquire_job("eu-gpu", {"zone": "eu", "gpu": "yes", "x": "1"})
    assert job is not None
    assert job.id == job_id
    assert job.tags == {"zone": "eu", "gpu": "yes"}


async def test_agent_reports_lifecycle_ports_and_stats(api: Api) -> None:
    await api.setup_owner()
    await _push(api)
    await api.call("POST", "/workspaces", {"name": "dev", "template": "local"})
    job = await api.cd.store.acquire_job("d", {})
    assert job is not None
    done = await api.cd.store.complete_job(
        job.id, result={"resources": [], "agents": [{"name": "main"}]}, error=None)
    await on_job_completed(done)
    hdr = {"Burrow-Agent-Token": job.input["agent_token"]}

    async def post(path: str, body: object) -> int:
        return (await api.call("POST", path, body, token=None, headers=hdr)).status

    assert await post("/workspaceagents/me/lifecycle", {"state": "starting",
                                                         "changed_at": 1.5}) == 204
    assert await post("/workspaceagents/me/lifecycle", {"state": "ready"}) == 204
    assert await post("/workspaceagents/me/ports", {"ports": [
        {"port": 8080, "address": "0.0.0.0", "family": "tcp", "process": "python3"},
        {"port": 22, "address": "::", "family": "tcp6"}]}) == 204
    assert await post("/workspaceagents/me/stats", {"services": {
        "ssh": {"sessions_total": 3, "sessions_open": 1, "bytes_in": 10, "bytes_out": 20}}}) == 204
    r = await api.call("GET", "/workspaces/dev")
    agent = r.body["latest_build"]["agents"][0]
    assert agent["lifecycle_state"] == "ready"
    assert [p["port"] for p in agent["ports"]] == [8080, 22]
    assert agent["ports"][0]["process"] == "python3"
    assert agent["stats"]["services"]["ssh"]["sessions_total"] == 3
    assert agent["stats"]["services"]["ssh"]["errors"] == 0
    assert agent["tunnel"] == {}  # no tunnel part reported yet
    assert await post("/workspaceagents/me/stats", {"services": {}, "tunnel": {
        "sessions": 2, "rtt_ms_median": 1.25, "rtt_ms_max": 7,
        "paths": {"direct": 1, "relay": 1}}}) == 204
    r = await api.call("GET", "/workspaces/dev")
    agent = r.body["latest_build"]["agents"][0]
    assert agent["tunnel"] == {"sessions": 2, "rtt_ms_median": 1.25, "rtt_ms_max": 7.0,
                               "paths": {"direct": 1, "relay": 1, "none": 0}}
    assert agent["reported_at"] is not None
    stored = await api.cd.store.get_agent(agent["id"])
    assert stored is not None
    assert stored.tunnel["rtt_ms_median"] == 1.25
    assert await post("/workspaceagents/me/stats", {"services": {}, "tunnel": {
        "sessions": 1, "rtt_ms_median": None, "rtt_ms_max": None, "paths": {"none": 1}}}) == 204
    r = await api.call("GET", "/workspaces/dev")
    assert r.body["latest_build"]["agents"][0]["tunnel"]["rtt_ms_median"] is None
    bad_tunnel = [
        "fast", {"rtt_ms_median": "1ms"}, {"rtt_ms_max": True}, {"rtt_ms_median": -1},
        {"sessions": 1.5}, {"sessions": "2"}, {"paths": {"direct": "1"}},
        {"paths": {"udp": 1}}, {"paths": [1]}, {"jitter": 1},
    ]
    for tunnel in bad_tunnel:
        r = await api.call("POST", "/workspaceagents/me/stats",
                           {"services": {}, "tunnel": tunnel}, token=None, headers=hdr)
        assert r.status == 400, tunnel
        assert r.body["message"], tunnel
    bad = [
        ("/workspaceagents/me/lifecycle", {"state": "exploded"}),
        ("/workspaceagents/me/lifecycle", {"state": "ready", "changed_at": "now"}),
        ("/workspaceagents/me/ports", {"ports": [{"port": 0}]}),
        ("/workspaceagents/me/ports", {"ports": [{"port": 80, "family": "udp"}]}),
        ("/workspaceagents/me/ports", {"ports": [{"port": 80, "extra": 1}]}),
        ("/workspaceagents/me/ports", {"ports": [{"port": 80}] * 300}),
        ("/workspaceagents/me/ports", {"ports": "80"}),
        ("/workspaceagents/me/stats", {"services": {"ssh": {"bytes_in": -1}}}),
        ("/workspaceagents/me/stats", {"services": {"SSH!": {}}}),
        ("/workspaceagents/me/stats", {"services": {"ssh": {"cpu": 1}}}),
    ]
    for path, body in bad:
        assert await post(path, body) == 400, (path, body)
    # a user token is no agent token
    r = await api.call("POST", "/workspaceagents/me/lifecycle", {"state": "ready"})
    assert r.status == 401
