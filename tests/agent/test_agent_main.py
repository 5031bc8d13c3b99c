"""``burrow agent``'s own pieces: keys, relay choice, manifest retries, reports, peers, the CLI.

A tiny h11 server on 127.0.0.1 (port 0) plays coderd where HTTP is involved;
the whole agent against a real coderd runs in tests/e2e/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import h11
import pytest
import trio

from agent import run as agent_run
from agent.http import CoderdClient, CoderdRefused, CoderdUnreachable, probe_latency
from agent.lifecycle import State
from agent.reports import Reporter
from agent.run import (
    Agent,
    AgentError,
    AgentOptions,
    Region,
    fetch_manifest,
    load_or_create_node_key,
    measure_regions,
    parse_regions,
    pick_home,
)
from agent.scripts import LogLine
from derp.keys import generate_private_key
from tunnel.endpoint import Endpoint

Reply = tuple[int, Any]
Handler = Callable[[str, str, bytes], Awaitable[Reply]]


async def _serve_http(handler: Handler, task_status: trio.TaskStatus[int]) -> None:
    async def one(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        body = b""
        method = target = ""
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    method, target = event.method.decode(), event.target.decode()
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            status, obj = await handler(method, target, body)
            payload = b"" if obj is None else json.dumps(obj).encode()
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=[
                ("Content-Length", str(len(payload))), ("Connection", "close")])))
            await stream.send_all(conn.send(h11.Data(data=payload)) + conn.send(
                h11.EndOfMessage()))

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(one, listeners)


def _dead_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_node_key_is_created_0600_then_reused_and_garbage_refused(tmp_path: Path) -> None:
    path = tmp_path / "d" / "node_key"
    key = load_or_create_node_key(path)
    assert len(key) == 32
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_or_create_node_key(path) == key
    path.write_text("not a key\n")
    with pytest.raises(AgentError, match="32-byte key"):
        load_or_create_node_key(path)
    path.write_text("ab" * 31)
    with pytest.raises(AgentError):
        load_or_create_node_key(path)


def test_regions_parsed_and_home_is_the_fastest_that_answered() -> None:
    regions = parse_regions({"regions": [
        {"region_id": 1, "url": "http://a"}, {"region_id": "2", "url": "http://b"},
        {"region_id": 3, "url": "ftp://c"}, "junk", {"region_id": 4, "url": "https://d"},
        {"region_id": True, "url": "http://e"}]})
    assert regions == [Region(1, "http://a"), Region(4, "https://d")]
    assert pick_home(regions, {1: 9.0, 4: 2.5}) == Region(4, "https://d")
    assert pick_home(regions, {1: 9.0}) == Region(1, "http://a")
    assert pick_home(regions, {}) == Region(1, "http://a")  # none answered: the first
    bad: list[Any] = [None, {}, {"regions": "x"}, {"regions": []}]
    for b in bad:
        assert parse_regions(b) == []
    with pytest.raises(AgentError):
        pick_home([], {})


async def test_latency_probes_measure_live_regions_and_skip_dead_ones() -> None:
    seen: list[str] = []

    async def coderd(method: str, target: str, body: bytes) -> Reply:
        seen.append(target)
        return (200, None) if target == "/derp/latency-check" else (404, {"message": "no"})

    async with trio.open_nursery() as nursery:
        port = await nursery.start(_serve_http, coderd)
        with trio.fail_after(20):
            got = await measure_regions([
                Region(1, f"http://127.0.0.1:{port}"), Region(2, f"http://127.0.0.1:{_dead_port()}"),
                Region(3, f"http://127.0.0.1:{port}/prefix")], timeout=2)
            assert 0 < await probe_latency(f"http://127.0.0.1:{port}") < 2
        nursery.cancel_scope.cancel()
    assert set(got) == {1}  # 2 refuses connections, 3 answers 404
    assert seen.count("/derp/latency-check") == 4


async def test_manifest_is_retried_while_coderd_fails_then_fetched() -> None:
    calls: list[tuple[str, str]] = []

    async def coderd(method: str, target: str, body: bytes) -> Reply:
        calls.append((method, target))
        if len(calls) < 3:
            return 503, {"message": "starting up"}
        return 200, {"agent_id": "a1", "relay_map": {"regions": []}}

    async with trio.open_nursery() as nursery:
        port = await nursery.start(_serve_http, coderd)
        with trio.fail_after(20):
            manifest = await fetch_manifest(CoderdClient(f"http://127.0.0.1:{port}", "tok"))
        nursery.cancel_scope.cancel()
    assert manifest["agent_id"] == "a1"
    assert calls == [("GET", "/api/v2/workspaceagents/me/manifest")] * 3


async def test_manifest_with_a_refused_token_is_an_agent_error() -> None:
    async def coderd(method: str, target: str, body: bytes) -> Reply:
        return 401, {"message": "agent token is no longer valid"}

    async with trio.open_nursery() as nursery:
        port = await nursery.start(_serve_http, coderd)
        with trio.fail_after(20), pytest.raises(AgentError, match="no longer valid"):
            await fetch_manifest(CoderdClient(f"http://127.0.0.1:{port}", "tok"))
        nursery.cancel_scope.cancel()


async def test_manifest_waits_for_an_unreachable_coderd_with_backoff() -> None:
    api = CoderdClient(f"http://127.0.0.1:{_dead_port()}", "tok", timeout=2)
    with pytest.raises(CoderdUnreachable):
        await api.request("GET", "/x")
    with trio.move_on_after(1.0) as scope:
        await fetch_manifest(api)
    assert scope.cancelled_caught  # still retrying, never raised


class FakeApi:
    """Stands in for CoderdClient: records bodies; can be 'down'."""

    def __init__(self) -> None:
        self.down = False
        self.refuse_logs = 0
        self.got: list[tuple[str, Any]] = []

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        await trio.sleep(0)
        if self.down:
            raise CoderdUnreachable("down")
        if path.endswith("/logs") and self.refuse_logs:
            raise CoderdRefused(self.refuse_logs, "no")
        self.got.append((path, body))
        return None


async def test_reporter_sends_in_order_waits_out_an_outage_and_bounds_the_backlog() -> None:
    api = FakeApi()
    reporter = Reporter(cast(CoderdClient, api), max_log_lines=5)
    api.down = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reporter.run_outbox)
        reporter.advance(State.STARTING)
        reporter.add_logs("startup_script", [LogLine(1.0, f"l{i}") for i in range(4)])
        reporter.add_logs("startup_script", [LogLine(2.0, f"m{i}") for i in range(3)])  # 1 fits
        reporter.add_logs("startup_script", [LogLine(3.0, "n0")])  # dropped: full
        reporter.advance(State.READY)
        reporter.advance(State.CREATED)  # illegal: ignored
        with trio.fail_after(5):
            assert not await reporter.flushed(0.5)  # coderd is down: nothing sent
            api.down = False
            assert await reporter.flushed(4)
        reporter.add_logs("startup_script", [LogLine(4.0, "after")])
        with trio.fail_after(5):
            assert await reporter.flushed(4)
        nursery.cancel_scope.cancel()
    paths = [p.rsplit("/", 1)[1] for p, _ in api.got]
    assert paths == ["lifecycle", "logs", "logs", "lifecycle", "logs"]
    assert api.got[0][1]["state"] == "starting"
    assert api.got[3][1]["state"] == "ready"
    texts = [line["text"] for _, body in api.got if "logs" in body for line in body["logs"]]
    assert texts[:5] == ["l0", "l1", "l2", "l3", "m0"]
    assert texts[5].startswith("[burrow] 3 lines dropped")  # m1, m2, n0
    assert texts[6] == "after"


async def test_reporter_stops_sending_logs_to_a_coderd_without_the_endpoint() -> None:
    api = FakeApi()
    api.refuse_logs = 404
    reporter = Reporter(cast(CoderdClient, api))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reporter.run_outbox)
        reporter.add_logs("startup_script", [LogLine(1.0, "x")])
        reporter.advance(State.STARTING)
        with trio.fail_after(5):
            assert await reporter.flushed(4)
        nursery.cancel_scope.cancel()
    assert not reporter.logs_supported
    assert [p for p, _ in api.got] == ["/workspaceagents/me/lifecycle"]


def test_reporter_snapshots_have_the_api_shape() -> None:
    from agent.stats import ConnStats

    stats = ConnStats()
    stats.session_opened()
    stats.add_in(10)
    reporter = Reporter(cast(CoderdClient, FakeApi()), services={"ssh": stats})
    assert reporter.stats_body() == {"services": {"ssh": {
        "sessions_total": 1, "sessions_open": 1, "bytes_in": 10, "bytes_out": 0, "errors": 0}}}
    ports = reporter.ports_body()["ports"]
    assert all(set(p) <= {"port", "address", "family", "process"} for p in ports)


async def test_stats_report_carries_the_tunnel_rtt_once_a_session_measured_one(
    tmp_path: Path
) -> None:
    from tunnel.mempath import MemoryNetwork
    from tunnel.stream import TunnelStream

    agent = Agent(AgentOptions(url="http://127.0.0.1:1", token="t", data_dir=tmp_path))
    assert agent.reporter.stats_body()["tunnel"] == {
        "sessions": 0, "rtt_ms_median": None, "rtt_ms_max": None,
        "paths": {"direct": 0, "relay": 0, "none": 0}}
    net = MemoryNetwork()
    ep = agent.endpoint = Endpoint(generate_private_key())
    client = Endpoint(generate_private_key())
    ep.add_relay(net.attach(ep.public_key))
    client.add_relay(net.attach(client.public_key))
    ep.set_peer(client.public_key)
    client.set_peer(ep.public_key)

    async def echo(peer: bytes, service: str, stream: TunnelStream) -> None:
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        await nursery.start(ep.run)
        await nursery.start(client.run)
        nursery.start_soon(ep.serve, echo)
        with trio.fail_after(5):
            s = await client.open_stream(ep.public_key, "ssh")
            for i in range(5):  # data both ways: the agent's side gets acks to time
                await s.send_all(b"x%d" % i)
                assert await s.receive_some()
            sent_before = net.counts["sent"]
            body = agent.reporter.stats_body()
            assert net.counts["sent"] == sent_before  # read, not measured by a ping
        nursery.cancel_scope.cancel()
    tunnel = body["tunnel"]
    assert tunnel["sessions"] == 1
    assert tunnel["paths"] == {"direct": 0, "relay": 1, "none": 0}
    assert isinstance(tunnel["rtt_ms_median"], float)
    assert 0 <= tunnel["rtt_ms_median"] <= tunnel["rtt_ms_max"] < 5000
    assert json.loads(json.dumps(body)) == body  # what goes on the wire


async def test_only_keys_the_coordinator_named_may_open_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = Agent(AgentOptions(url="http://127.0.0.1:1", token="t", data_dir=tmp_path))
    agent.endpoint = Endpoint(generate_private_key())
    client = os.urandom(32)
    stranger = os.urandom(32)
    authorized = agent.endpoint._authorized
    agent._on_peer("c1", {"key": client.hex(), "endpoints": ["127.0.0.1:4242", "junk"]})
    agent._on_peer("c2", {"key": "zz" * 32})
    agent._on_peer("c3", "not a node")
    assert authorized(client)
    assert not authorized(stranger)
    # the client's coordinator connection goes: still allowed for the grace period...
    agent._on_peer_gone("c1")
    agent._expire_peers()
    assert authorized(client)
    # ...a re-announcement cancels the expiry; after the grace it is gone
    monkeypatch.setattr(agent_run, "PEER_GRACE", 0.0)
    agent._on_peer("c4", {"key": client.hex()})
    agent._expire_peers()
    assert authorized(client)
    agent._on_peer_gone("c4")
    time.sleep(0.01)
    agent._expire_peers()
    assert not authorized(client)


def _agent_cli(*args: str, env: dict[str, str] | None = None,
               timeout: float = 30) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BURROW_")}
    return subprocess.run([sys.executable, "-m", "burrow.cli", "agent", *args],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**base, **(env or {})}, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("args", "env", "needle"), [
    ((), {}, "--url"),
    (("--url", "http://127.0.0.1:1"), {}, "--token"),
    (("--url", "ftp://x", "--token", "t"), {}, "http(s)"),
    (("--url", "http://127.0.0.1:1", "--token", "t", "--startup-timeout", "soon"), {}, "seconds"),
    (("--url", "http://127.0.0.1:1", "--token", "t", "--bogus"), {}, "unrecognized"),
    (("--token", "t"), {"BURROW_REPORT_INTERVAL": "-1"}, "REPORT_INTERVAL"),
])
def test_cli_usage_mistakes_are_one_line_exit_2(
    args: tuple[str, ...], env: dict[str, str], needle: str
) -> None:
    proc = _agent_cli(*args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert needle in proc.stderr


def test_cli_refused_token_is_one_line_exit_1(tmp_path: Path) -> None:
    script = tmp_path / "coderd.py"
    script.write_text(
        "import http.server, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        b = b'{\"message\": \"agent authentication required\"}'\n"
        "        self.send_response(401); self.send_header('Content-Length', str(len(b)))\n"
        "        self.end_headers(); self.wfile.write(b)\n"
        "    def log_message(self, *a): pass\n"
        "s = http.server.HTTPServer(('127.0.0.1', 0), H)\n"
        "print(s.server_address[1], flush=True)\n"
        "s.serve_forever()\n")
    server = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        procs = [
            _agent_cli("--url", url, "--data-dir", str(tmp_path / "d"),
                       env={"BURROW_AGENT_TOKEN": "nope"}),
            # a token may start with "-" (url-safe base64); templates pass it as --token "$T"
            _agent_cli("--url", url, "--token", "-starts-with-a-dash", "--data-dir",
                       str(tmp_path / "d")),
        ]
    finally:
        server.kill()
        server.wait(10)
    for proc in procs:
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == (
            "burrow agent: coderd refused the agent token: HTTP 401: agent authentication "
            "required")
        assert "Traceback" not in proc.stderr


def test_cli_sigterm_while_coderd_is_unreachable_exits_cleanly(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BURROW_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "burrow.cli", "agent", "--url", f"http://127.0.0.1:{_dead_port()}",
         "--token", "t", "--data-dir", str(tmp_path / "d")],
        env=base, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        assert proc.stderr is not None
        line = b""
        while b"coderd unreachable" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    assert (tmp_path / "d" / "node_key").exists()


def test_direct_endpoint_advertises_a_reachable_address_for_a_wildcard_bind() -> None:
    from agent.run import advertised_host

    assert advertised_host("127.0.0.1", "http://10.9.9.9:3000") == "127.0.0.1"
    assert advertised_host("192.0.2.7", "http://127.0.0.1:3000") == "192.0.2.7"
    # bound to every interface: the address this host reaches coderd from
    assert advertised_host("0.0.0.0", "http://127.0.0.1:3000") == "127.0.0.1"
    assert advertised_host("0.0.0.0", "http://[::1]:3000") == "127.0.0.1"  # v4 bind, v6 coderd


async def test_agent_ends_when_the_coordinator_keeps_refusing_its_token(tmp_path: Path) -> None:
    from web.frontdoor import FrontDoor
    from web.http import Request, Response, Upgrade
    from web.listener import serve_http

    attempts: list[str] = []

    async def coderd(request: Request, upgrade: Upgrade) -> Response | None:
        if request.path.endswith("/manifest"):
            return Response.json(200, {"relay_map": {"regions": [
                {"region_id": 1, "url": f"http://127.0.0.1:{_dead_port()}"}]}})
        if request.path.endswith("/coordinate"):
            attempts.append(request.path)
            return Response.json(401, {"message": "agent token is no longer valid"})
        return Response(204)

    door = FrontDoor()
    door.mount("/api/v2", coderd)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_http, door, "127.0.0.1:0")
        agent = Agent(AgentOptions(url=url, token="t", data_dir=tmp_path, direct_address=""))
        with trio.fail_after(20), pytest.RaisesGroup(
                pytest.RaisesExc(AgentError, match="no longer accepts"), flatten_subgroups=True):
            await agent.run()
        nursery.cancel_scope.cancel()
    assert len(attempts) == 3
