"""Daemons <-> ProvisionerAPI over a real front door on loopback, with a real store
(SQLite) and real terraform.

Every daemon runs in the test's nursery and is cancelled at the end; every
process a test starts is killed by PID in ``finally``; ``trio.fail_after``
bounds every wait.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trio
import trio_websocket

from coderd.provisionerd_api import ProvisionerAPI
from coderd.pubsub import JOBS
from coderd.store.base import Job, JobStatus
from coderd.store.factory import Opened, open_store
from provisionerd import archive, protocol
from provisionerd.client import connector
from provisionerd.daemon import ProvisionerDaemon, Unauthorized
from web.frontdoor import FrontDoor
from web.listener import serve_http

pytestmark = pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform not installed")

PSK = "test-psk-0123456789"

QUICK_TF = """
variable "burrow_workspace_name" { type = string }
variable "burrow_workspace_transition" { type = string }
variable "burrow_agent_token" {
  type = string
  sensitive = true
}
resource "terraform_data" "vm" {
  count = var.burrow_workspace_transition == "start" ? 1 : 0
  input = var.burrow_workspace_name
  provisioner "local-exec" {
    command = "echo building $N"
    environment = { N = var.burrow_workspace_name }
  }
}
output "burrow_agents" {
  value = [{ name = "main", resource = "terraform_data.vm" }]
}
"""


# The provisionerd subcommand alone (the whole CLI imports every other command).
CLI = (
    "import sys; from burrow.flags import Parser; from burrow.commands import provisionerd as m; "
    "p = Parser(prog='burrow'); s = p.add_subparsers(dest='command'); m.register(s); "
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.run(a))"
)


def slow_tf(pid_file: Path) -> str:
    return (
        'resource "terraform_data" "slow" {\n  provisioner "local-exec" {\n'
        f'    command = "echo $$ > {pid_file}; echo ready-$((1+1)); sleep 60"\n'
        "  }\n}\n"
    )


def template(tmp_path: Path, text: str, name: str = "tpl") -> bytes:
    src = tmp_path / name
    src.mkdir(exist_ok=True)
    (src / "main.tf").write_text(text)
    return archive.pack(src)


def build_input(tpl: bytes, name: str = "ws") -> dict[str, object]:
    return protocol.BuildInput(
        template=tpl,
        transition="start",
        workspace_name=name,
        workspace_owner="alice",
        agent_token="agent-token-secret",
        access_url="http://127.0.0.1:9",
    ).to_json()


@dataclass
class Env:
    opened: Opened
    api: ProvisionerAPI
    url: str
    nursery: trio.Nursery
    tmp: Path
    done: list[Job] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    async def enqueue(self, tpl: bytes, name: str, tags: dict[str, str] | None = None) -> Job:
        job = await self.opened.store.enqueue_job(
            protocol.JOB_KIND_BUILD, build_input(tpl, name), tags or {}
        )
        await self.opened.pubsub.publish(JOBS, job.id)
        return job

    async def wait_done(self, job_id: str, timeout: float = 30) -> Job:
        with trio.fail_after(timeout):
            while True:
                for job in self.done:
                    if job.id == job_id:
                        return job
                self.changed = trio.Event()
                await self.changed.wait()

    def daemon(self, name: str, tags: dict[str, str], *, psk: str = PSK) -> ProvisionerDaemon:
        async def connect() -> object:
            raise AssertionError("replaced in start_daemon")

        return ProvisionerDaemon(
            connect,  # type: ignore[arg-type]
            name=name,
            tags=tags,
            workdir_root=self.tmp / f"work-{name}",
            heartbeat_interval=0.2,
            log_flush_interval=0.05,
            cancel_grace=2.0,
            backoff=(0.05, 0.2),
        )

    async def start_daemon(
        self, name: str, tags: dict[str, str] | None = None, *, psk: str = PSK
    ) -> ProvisionerDaemon:
        d = self.daemon(name, tags or {}, psk=psk)

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with connector(self.url, psk=psk) as connect:
                d.connect = connect
                await d.run(task_status=task_status)

        with trio.fail_after(10):
            await self.nursery.start(run)
        return d


def _load_pg_fixture() -> object:
    # coderd's conftest starts a real PostgreSQL (Debian's packages); reuse it by path
    # (test dirs are not packages under --import-mode=importlib).
    path = Path(__file__).resolve().parents[1] / "coderd" / "conftest.py"
    spec = importlib.util.spec_from_file_location("burrow_coderd_conftest_for_provisionerd", path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod.pg_server


pg_server = _load_pg_fixture()
BOTH_BACKENDS = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
async def env(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    if backend == "postgres":
        server = request.getfixturevalue("pg_server")
        opened = await open_store(postgres_url=server.fresh_database())
    else:
        opened = await open_store(data_dir=str(tmp_path / "db"))
    holder: list[Env] = []

    async def on_done(job: Job) -> None:
        e = holder[0]
        e.done.append(job)
        e.changed.set()

    api = ProvisionerAPI(
        opened.store,
        opened.pubsub,
        psk=PSK,
        on_job_completed=on_done,
        heartbeat_timeout=3.0,
        internal_psk="internal-key",
    )
    door = FrontDoor()
    door.mount(protocol.PATH, api.handler)
    try:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_http, door, "127.0.0.1:0")
            nursery.start_soon(api.run_reaper, 0.1)
            e = Env(opened, api, url, nursery, tmp_path)
            holder.append(e)
            yield e
            nursery.cancel_scope.cancel()
    finally:
        await opened.aclose()


async def test_build_runs_and_reports_result_and_logs(env: Env) -> None:
    d = await env.start_daemon("d1")
    assert env.api.connected == {d.daemon_id: "d1"}
    job = await env.enqueue(template(env.tmp, QUICK_TF), "box")
    done = await env.wait_done(job.id)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.daemon_id == d.daemon_id
    result = protocol.BuildResult.from_json(done.result)
    assert result.state is not None
    assert b"terraform_data" in result.state
    assert result.resources == [
        {
            "address": "terraform_data.vm[0]",
            "type": "terraform_data",
            "name": "vm",
            "kind": "computational",
            "lifetime": "ephemeral",
        }
    ]
    assert [a["name"] for a in result.agents] == ["main"]
    logs = await env.opened.store.get_job_logs(job.id)
    text = [x.output for x in logs]
    assert any("building box" in t for t in text)
    assert any(t.startswith("$ terraform apply") for t in text)
    assert not any("agent-token-secret" in t for t in text)
    assert [x.id for x in logs] == sorted(x.id for x in logs)
    # The daemon is ready for the next job at once (no polling delay needed: pubsub).
    job2 = await env.enqueue(template(env.tmp, QUICK_TF), "box2")
    assert (await env.wait_done(job2.id)).status == JobStatus.SUCCEEDED


async def test_failing_template_fails_job_with_terraform_message(env: Env) -> None:
    await env.start_daemon("d1")
    job = await env.enqueue(template(env.tmp, 'resource "nope" {\n'), "bad")
    done = await env.wait_done(job.id)
    assert done.status == JobStatus.FAILED
    assert done.error is not None
    assert "Error:" in done.error
    logs = [x for x in await env.opened.store.get_job_logs(job.id)]
    assert any(x.level == "error" and "Error:" in x.output for x in logs)


async def test_missing_terraform_fails_job_and_daemon_keeps_serving(env: Env) -> None:
    d = await env.start_daemon("d1")
    d.terraform = str(env.tmp / "no-terraform-here")
    job = await env.enqueue(template(env.tmp, QUICK_TF), "x")
    done = await env.wait_done(job.id)
    assert done.status == JobStatus.FAILED
    assert done.error is not None
    assert "not found" in done.error
    assert any("TerraformNotFound" in x.output for x in await env.opened.store.get_job_logs(job.id))
    d.terraform = "terraform"
    job2 = await env.enqueue(template(env.tmp, QUICK_TF), "y")
    assert (await env.wait_done(job2.id)).status == JobStatus.SUCCEEDED


async def test_wrong_psk_is_refused(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    d = env.daemon("intruder", {})

    async def attempt() -> None:
        async with connector(env.url, psk="wrong-key-xyz") as connect:
            d.connect = connect
            await d.run()

    with pytest.raises(Unauthorized), trio.fail_after(10):
        await attempt()
    assert env.api.refused == 1
    assert "wrong-key-xyz" not in caplog.text
    assert "refused" in caplog.text


async def test_internal_psk_accepted_and_psk_in_hello(env: Env) -> None:
    await env.start_daemon("builtin", psk="internal-key")
    # A client that cannot set headers sends the key in hello instead.
    with trio.fail_after(10):
        async with trio_websocket.open_websocket_url(
            env.url.replace("http", "ws") + protocol.PATH, subprotocols=[protocol.SUBPROTOCOL]
        ) as ws:
            await ws.send_message(protocol.encode(protocol.Hello("h", "h", {}, psk="nope")))
            msg = protocol.decode(await ws.get_message())
            assert isinstance(msg, protocol.Error)
            assert "unauthorized" in msg.message
        async with trio_websocket.open_websocket_url(
            env.url.replace("http", "ws") + protocol.PATH, subprotocols=[protocol.SUBPROTOCOL]
        ) as ws:
            await ws.send_message(protocol.encode(protocol.Hello("h2", "h2", {}, psk=PSK)))
            assert protocol.decode(await ws.get_message()) == protocol.Welcome("h2")


async def test_protocol_garbage_closes_that_connection_only(env: Env) -> None:
    await env.start_daemon("good")
    with trio.fail_after(10):
        async with trio_websocket.open_websocket_url(
            env.url.replace("http", "ws") + protocol.PATH,
            extra_headers=[(protocol.PSK_HEADER.encode(), PSK.encode())],
        ) as ws:
            await ws.send_message("{not json")
            msg = protocol.decode(await ws.get_message())
            assert isinstance(msg, protocol.Error)
            with pytest.raises(trio_websocket.ConnectionClosed):
                await ws.get_message()
    assert env.api.protocol_errors == 1
    job = await env.enqueue(template(env.tmp, QUICK_TF), "after")
    assert (await env.wait_done(job.id)).status == JobStatus.SUCCEEDED


async def test_plain_http_gets_400(env: Env) -> None:
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", int(env.url.rsplit(":", 1)[1]))
        async with stream:
            await stream.send_all(
                f"GET {protocol.PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 400")
    assert b'"message"' in data


async def test_cancel_running_job(env: Env) -> None:
    await env.start_daemon("d1")
    pid_file = env.tmp / "slow.pid"
    job = await env.enqueue(template(env.tmp, slow_tf(pid_file)), "slow")
    shell: int | None = None
    try:
        with trio.fail_after(30):
            while not pid_file.exists() or not pid_file.read_text():
                await trio.sleep(0.05)
        shell = int(pid_file.read_text())
        await env.opened.store.request_cancel(job.id)
        done = await env.wait_done(job.id)
        assert done.status == JobStatus.CANCELED
        assert done.error == "canceled"
        logs = [x.output for x in await env.opened.store.get_job_logs(job.id)]
        assert any("interrupting terraform" in x for x in logs)
    finally:
        if shell is not None:
            with trio.move_on_after(10):
                while _alive(shell):
                    await trio.sleep(0.05)
            if _alive(shell):
                os.kill(shell, signal.SIGKILL)
                pytest.fail("the cancelled job's command was still running")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@BOTH_BACKENDS
async def test_tags_route_jobs_to_matching_daemons(env: Env) -> None:
    a = await env.start_daemon("a", {"zone": "a"})
    b = await env.start_daemon("b", {"zone": "b"})
    tpl = template(env.tmp, QUICK_TF)
    jobs = []
    for i in range(3):
        jobs.append((await env.enqueue(tpl, f"a{i}", {"zone": "a"}), a.daemon_id))
        jobs.append((await env.enqueue(tpl, f"b{i}", {"zone": "b"}), b.daemon_id))
    for job, expected in jobs:
        done = await env.wait_done(job.id, timeout=60)
        assert done.status == JobStatus.SUCCEEDED, done.error
        assert done.daemon_id == expected
    # A job no daemon matches stays pending.
    orphan = await env.enqueue(tpl, "c", {"zone": "c"})
    await trio.sleep(0.5)
    got = await env.opened.store.get_job(orphan.id)
    assert got is not None
    assert got.status == JobStatus.PENDING


@BOTH_BACKENDS
async def test_killed_daemon_job_fails_after_heartbeat_timeout(env: Env) -> None:
    # An external daemon process (burrow provisionerd start) is SIGKILLed mid-job.
    pid_file = env.tmp / "slow.pid"
    job = await env.enqueue(template(env.tmp, slow_tf(pid_file)), "slow")
    cmd = [
        sys.executable, "-c", CLI, "provisionerd", "start",
        "--url", env.url, "--psk", PSK, "--name", "external",
        "--workdir", str(env.tmp / "ext-work"), "--heartbeat-interval", "0.2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shell: int | None = None
    try:
        with trio.fail_after(30):
            while not pid_file.exists() or not pid_file.read_text():
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                await trio.sleep(0.05)
        shell = int(pid_file.read_text())
        running = await env.opened.store.get_job(job.id)
        assert running is not None
        assert running.status == JobStatus.RUNNING
        proc.kill()
        proc.wait(timeout=10)
        done = await env.wait_done(job.id, timeout=30)
        assert done.status == JobStatus.FAILED
        assert done.error is not None
        assert "heartbeat" in done.error
        # The next job still runs, on another daemon.
        await env.start_daemon("next")
        job2 = await env.enqueue(template(env.tmp, QUICK_TF), "after")
        assert (await env.wait_done(job2.id)).status == JobStatus.SUCCEEDED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
        if shell is not None and _alive(shell):
            # The orphaned terraform and its command share a process group.
            os.killpg(os.getpgid(shell), signal.SIGKILL)


async def test_builtin_daemons_use_internal_key(env: Env) -> None:
    from provisionerd.builtin import run_builtin_daemons

    with trio.fail_after(15):
        daemons = await env.nursery.start(
            partial(
                run_builtin_daemons,
                env.url,
                psk="internal-key",
                count=2,
                workdir_root=env.tmp / "builtin",
                heartbeat_interval=0.2,
            )
        )
    assert len(daemons) == 2
    assert sorted(env.api.connected.values()) == ["built-in-0", "built-in-1"]
    tpl = template(env.tmp, QUICK_TF)
    jobs = [await env.enqueue(tpl, f"w{i}") for i in range(4)]
    for job in jobs:
        assert (await env.wait_done(job.id)).status == JobStatus.SUCCEEDED
    # Counted after coderd's "completed" reply, which follows on_job_completed.
    with trio.fail_after(10):
        while sum(d.jobs_completed for d in daemons) < 4:
            await trio.sleep(0.02)


BIG_TF = """
locals {
  row = join("", [for j in range(20) : "0123456789abcdef0123456789abcdef0123456789abcdef"])
}
resource "terraform_data" "big" {
  input = join("", [for i in range(1000) : local.row])
}
"""


async def test_big_state_and_long_log_lines_cross_a_1mib_message_limit(env: Env) -> None:
    # The front door's WebSocket keeps trio-websocket's 1 MiB message limit: the
    # ~2 MB state goes in state_chunk pieces and long lines in bounded log batches.
    await env.start_daemon("d1")
    job = await env.enqueue(template(env.tmp, BIG_TF), "big")
    done = await env.wait_done(job.id, timeout=60)
    assert done.status == JobStatus.SUCCEEDED, done.error
    result = protocol.BuildResult.from_json(done.result)
    assert result.state is not None
    assert len(result.state) > 1_900_000
    assert b"0123456789abcdef" * 100 in result.state
    logs = await env.opened.store.get_job_logs(job.id)
    assert sum(len(x.output) for x in logs) > 900_000  # plan printed the value


@BOTH_BACKENDS
async def test_twenty_jobs_three_daemons_each_runs_once(env: Env) -> None:
    daemons = [await env.start_daemon(f"d{i}") for i in range(3)]
    tpl = template(env.tmp, QUICK_TF)
    jobs = [await env.enqueue(tpl, f"w{i}") for i in range(20)]
    for job in jobs:
        done = await env.wait_done(job.id, timeout=120)
        assert done.status == JobStatus.SUCCEEDED, done.error
        logs = [x.output for x in await env.opened.store.get_job_logs(job.id)]
        assert sum(x.startswith("$ terraform apply") for x in logs) == 1
    assert len(env.done) == 20
    assert len({j.id for j in env.done}) == 20
    with trio.fail_after(10):
        while sum(d.jobs_completed for d in daemons) < 20:
            await trio.sleep(0.02)
    assert sum(d.jobs_completed for d in daemons) == 20


async def test_daemon_reconnects_after_the_connection_drops(env: Env) -> None:
    # A second front door whose first WebSocket is closed right after the upgrade.
    dropped = 0

    async def flaky(request: object, upgrade: object) -> object:
        nonlocal dropped
        if dropped == 0:
            dropped += 1
            ws = await upgrade.accept_websocket(protocol.SUBPROTOCOL)  # type: ignore[attr-defined]
            await ws.aclose()
            return None
        return await env.api.handler(request, upgrade)  # type: ignore[arg-type]

    door = FrontDoor()
    door.mount(protocol.PATH, flaky)  # type: ignore[arg-type]
    url = await env.nursery.start(serve_http, door, "127.0.0.1:0")
    d = env.daemon("flaky", {})

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with connector(url, psk=PSK) as connect:
            d.connect = connect
            await d.run(task_status=task_status)

    with trio.fail_after(15):
        await env.nursery.start(run)
    assert dropped == 1
    assert d.sessions == 2
    job = await env.enqueue(template(env.tmp, QUICK_TF), "again")
    assert (await env.wait_done(job.id)).status == JobStatus.SUCCEEDED


async def test_local_template_through_the_daemon(env: Env) -> None:
    fake = env.tmp / "fake-burrow"
    fake.write_text("#!/bin/sh\necho \"$@\" > \"$HOME/../args\"\nexec sleep 300\n")
    fake.chmod(0o755)
    data = env.tmp / "data"
    d = await env.start_daemon("local")
    d.variables = {"burrow_binary": str(fake), "data_dir": str(data)}
    tpl = archive.pack(Path(__file__).resolve().parents[2] / "templates" / "local")
    root = data / "alice" / "dev"
    agent: int | None = None

    async def build(transition: str, state: bytes | None) -> protocol.BuildResult:
        bi = protocol.BuildInput(tpl, transition, "dev", "alice", "tok", env.url, state)  # type: ignore[arg-type]
        job = await env.opened.store.enqueue_job(protocol.JOB_KIND_BUILD, bi.to_json(), {})
        await env.opened.pubsub.publish(JOBS, job.id)
        done = await env.wait_done(job.id, timeout=60)
        assert done.status == JobStatus.SUCCEEDED, done.error
        return protocol.BuildResult.from_json(done.result)

    try:
        res = await build("start", None)
        assert {r["kind"] for r in res.resources} == {"computational", "peripheral"}
        agent = int((root / "agent.pid").read_text())
        assert _alive(agent)
        res = await build("stop", res.state)
        with trio.fail_after(15):
            while _alive(agent):
                await trio.sleep(0.05)
        assert (root / "home").is_dir()
        await build("delete", res.state)
        assert not root.exists()
    finally:
        if agent is not None and _alive(agent):
            os.kill(agent, signal.SIGKILL)


async def test_sigterm_stops_external_daemon_and_its_terraform(env: Env) -> None:
    pid_file = env.tmp / "slow.pid"
    job = await env.enqueue(template(env.tmp, slow_tf(pid_file)), "slow")
    cmd = [
        sys.executable, "-c", CLI, "provisionerd", "start",
        "--url", env.url, "--psk", PSK, "--workdir", str(env.tmp / "ext-work"),
        "--heartbeat-interval", "0.2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shell: int | None = None
    try:
        with trio.fail_after(30):
            while not pid_file.exists() or not pid_file.read_text():
                assert proc.poll() is None
                await trio.sleep(0.05)
        shell = int(pid_file.read_text())
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            while proc.poll() is None:
                await trio.sleep(0.05)
        assert proc.returncode == 0
        with trio.fail_after(10):
            while _alive(shell):
                await trio.sleep(0.05)
        done = await env.wait_done(job.id, timeout=30)
        assert done.status == JobStatus.FAILED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if shell is not None and _alive(shell):
            os.killpg(os.getpgid(shell), signal.SIGKILL)
