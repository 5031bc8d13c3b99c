"""The SDK clients against coderd's real router over loopback HTTP(S).

coderd runs in-process (sqlite store, the same router ``burrow server``
mounts) behind the front door on 127.0.0.1 with a self-signed certificate,
so the clients go through TCP, TLS with a CA bundle, h11 and the typed
parsing.  Jobs are completed by hand, as a daemon would, to get an agent.

Rules: 127.0.0.1 only, port 0, every wait bounded by ``fail_after``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from coderd.api.app import make_router
from coderd.archive import MAX_UPLOAD
from coderd.builds import on_job_completed
from coderd.deps import Coderd, use
from coderd.store.factory import open_store
from sdk import types as t
from sdk.agent import AgentClient
from sdk.client import Client
from sdk.errors import ApiError, BadResponse, Unreachable, parse
from tests.coderd.apihelp import MAIN_TF, tar_of
from tests.relay.relay_procs import make_cert
from web.frontdoor import FrontDoor
from web.listener import serve_http


@dataclass
class Coderd_:
    url: str
    ca_file: str
    cd: Coderd


@pytest.fixture
async def coderd(tmp_path: Path) -> AsyncIterator[Coderd_]:
    cert, key = make_cert(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    opened = await open_store(data_dir=str(tmp_path / "data"))
    try:
        cd = Coderd(opened.store, opened.pubsub, "")
        use(cd)
        door = FrontDoor()
        door.mount("/api/v2", make_router(cd).handle, max_body=MAX_UPLOAD)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(lambda task_status: serve_http(
                door, "127.0.0.1:0", ssl_context=server_tls, task_status=task_status))
            cd.access_url = url
            yield Coderd_(url, cert, cd)
            nursery.cancel_scope.cancel()
    finally:
        await opened.aclose()


async def _owner(c: Coderd_) -> Client:
    client = Client(c.url, ca_file=c.ca_file, timeout=10)
    assert await client.first_user() == t.FirstUser(False)
    session = await client.create_first_user("alice", "alice@example.com", "password-1")
    assert session.user_id
    client.api.token = session.session_token
    return client


async def test_user_client_walks_the_api_with_typed_answers(coderd: Coderd_) -> None:
    with trio.fail_after(30):
        client = await _owner(coderd)
        me = await client.me()
        assert (me.username, me.roles) == ("alice", ["owner"])
        pushed = await client.push_template("local", tar_of({"main.tf": MAIN_TF}),
                                            version="v1", tags={"zone": "a"})
        assert pushed.files == ["main.tf"]
        assert pushed.version.tags == {"zone": "a"}
        assert [tm.name for tm in await client.templates()] == ["local"]
        assert [v.name for v in await client.template_versions("local")] == ["v1"]

        ws = await client.create_workspace("dev", "local", {"cpu": "2"})
        assert ws.agents == t.AgentCounts(0, 0)
        assert ws.latest_build is not None
        assert ws.latest_build.status == "pending"
        assert ws.latest_build.resources is None  # a summary, not the build in full
        full = await client.workspace("dev")
        assert full.latest_build is not None
        assert full.latest_build.resources == []
        assert [w.name for w in await client.workspaces(everyone=True)] == ["dev"]
        build = await client.build(ws.latest_build.id)
        assert build.variables == {"cpu": "2"}
        logs = await client.build_logs(build.id)
        assert (logs.logs, logs.done) == ([], False)
        canceled = await client.cancel_build(build.id)
        assert canceled.status in ("canceled", "canceling")
        assert [b.build_number for b in await client.builds("dev")] == [1]
        assert (await client.relay_map()).regions[0].code == "primary"

        created = await client.create_token("ci")
        assert [tok.name for tok in await client.tokens()] == ["ci"]
        other = Client(coderd.url, created.key, ca_file=coderd.ca_file)
        assert (await other.me()).id == me.id
        await client.delete_token(created.id)
        with pytest.raises(ApiError) as refused:
            await other.me()
        assert refused.value.status == 401


async def test_errors_carry_the_servers_message_and_validations(coderd: Coderd_) -> None:
    with trio.fail_after(30):
        client = await _owner(coderd)
        with pytest.raises(ApiError) as bad:
            await client.create_user("Bad Name", "nope", "short")
        assert bad.value.status == 400
        assert {v["field"] for v in bad.value.validations} >= {"username", "email"}
        assert str(bad.value).startswith("invalid request body (")
        with pytest.raises(ApiError, match="incorrect username or password"):
            await Client(coderd.url, ca_file=coderd.ca_file).login("alice", "wrong-password")
        with pytest.raises(ApiError, match="no such workspace"):
            await client.workspace("ghost")


async def test_unreachable_bad_tls_and_bad_ca_file(coderd: Coderd_, tmp_path: Path) -> None:
    with trio.fail_after(30):
        with pytest.raises(Unreachable, match="TLS"):  # the system CAs do not know it
            await Client(coderd.url, timeout=5).first_user()
        with pytest.raises(Unreachable, match="cannot reach"):
            await Client("http://127.0.0.1:9", timeout=5).first_user()
        with pytest.raises(ValueError, match="cannot load CA bundle"):
            Client(coderd.url, ca_file=str(tmp_path / "missing.pem"))
        with pytest.raises(ValueError, match="not an http"):
            Client("ftp://x")
        # An answer that is JSON but not the API's shape is the server's fault.
        client = await _owner(coderd)
        with pytest.raises(BadResponse, match="invalid User: created_at"):
            parse(t.User, {**(await client.me()).to_json(), "created_at": "x"}, client.url)


async def _agent_token(c: Coderd_, client: Client) -> str:
    await client.push_template("local", tar_of({"main.tf": MAIN_TF}))
    await client.create_workspace("dev", "local")
    job = await c.cd.store.acquire_job("d", {})
    assert job is not None
    agent = {"name": "main", "startup_script": "echo hi", "env": {"A": "1"},
             "startup_script_timeout": 7}
    done = await c.cd.store.complete_job(
        job.id, result=t.BuildResult(None, [], [agent]).to_json(), error=None)
    await on_job_completed(done)
    return str(t.BuildInput.from_json(job.input).agent_token)


async def test_agent_client_manifest_reports_and_logs(coderd: Coderd_) -> None:
    with trio.fail_after(30):
        owner = await _owner(coderd)
        agent = AgentClient(coderd.url, await _agent_token(coderd, owner),
                            ca_file=coderd.ca_file, timeout=10)
        manifest = await agent.manifest()
        assert (manifest.agent_name, manifest.owner_name) == ("main", "alice")
        assert manifest.env == {"A": "1"}
        assert manifest.startup_script_timeout == 7.0
        assert manifest.relay_map.regions[0].url == coderd.url
        assert (await agent.relay_map()) == manifest.relay_map
        assert agent.websocket_url("/x").startswith("wss://127.0.0.1:")
        assert agent.auth_header[0] == b"Burrow-Agent-Token"

        await agent.post_lifecycle(t.Lifecycle("starting", 100.0))
        await agent.post_ports(t.Ports([t.Port(8080, "127.0.0.1", "tcp", "python3")]))
        await agent.post_stats(t.Stats({"ssh": {"sessions_total": 2, "sessions_open": 1}}))
        stored = await agent.post_logs(t.ScriptLogs([t.ScriptLine("hello", 101.0)]))
        assert stored == t.LogsStored(1, 0)

        ws = await owner.workspace("dev")
        assert ws.latest_build is not None
        assert ws.latest_build.agents is not None
        seen = ws.latest_build.agents[0]
        assert seen.lifecycle_state == "starting"
        assert seen.ports[0]["port"] == 8080
        assert seen.stats["services"]["ssh"]["sessions_total"] == 2
        logs = await owner.agent_logs(seen.id)
        assert [(ln.text, ln.source) for ln in logs.logs] == [("hello", "startup_script")]

        with pytest.raises(ApiError) as refused:
            await AgentClient(coderd.url, "forged", ca_file=coderd.ca_file).manifest()
        assert refused.value.status == 401


async def test_compatibility_layers_keep_their_shapes_and_messages(coderd: Coderd_) -> None:
    from agent.http import CoderdClient, CoderdRefused, CoderdUnreachable
    from burrow.api_client import Client as CliClient
    from burrow.api_client import ConnectError

    with trio.fail_after(30):
        owner = await _owner(coderd)
        cli = CliClient(coderd.url, owner.token, ca_file=coderd.ca_file)
        assert await CliClient(coderd.url, ca_file=coderd.ca_file).first_user_exists() is True
        pushed = await cli.push_template("local", tar_of({"main.tf": MAIN_TF}))
        assert pushed["template"]["name"] == "local"
        ws = await cli.create_workspace("dev", "local")
        assert ws["latest_build"] is not None
        assert ws["latest_build"]["status"] == "pending"
        assert (await cli.me())["username"] == "alice"
        assert isinstance(await cli.create_token(), str)
        assert ConnectError is Unreachable

        agent = CoderdClient(coderd.url, "forged", ca_file=coderd.ca_file)
        with pytest.raises(CoderdRefused) as refused:
            await agent.request("GET", "/workspaceagents/me/manifest")
        assert refused.value.status == 401
        assert str(refused.value).startswith("HTTP 401: ")
        assert CoderdUnreachable is Unreachable
