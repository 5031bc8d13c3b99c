"""The access commands end to end on loopback, with real processes.

A real ``burrow server`` (embedded relay, built-in provisioner running real
Terraform) holds a workspace ``dev``; the test plays its agent in process
(``tests/burrow/access_world.py``: coordinator + relay + tunnel endpoint
serving E's SSHServer and ServiceRouter).  The REAL OpenSSH client then goes
through ``burrow config-ssh``'s ProxyCommand (``burrow ssh --stdio``), and
``burrow port-forward``, ``ping``, ``speedtest`` and ``netcheck`` run as CLI
processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.burrow.access_world import World, in_test_agent, running_world
from tests.netutil import free_port

pytestmark = [
    pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_world(tmp_path_factory.mktemp("access")) as w:
        yield w


async def run(world: World, *argv: str, timeout: float = 60,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(timeout):
        return await trio.run_process(
            list(argv), capture_stdout=True, capture_stderr=True, check=False,
            env={**world.env, **(env or {})}, stdin=subprocess.DEVNULL,
        )


async def burrow(world: World, *args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return await run(world, sys.executable, "-m", "burrow.cli", *args, **kw)  # type: ignore[arg-type]


def _ssh_config(world: World) -> Path:
    path = world.tmp / "home" / ".ssh" / "config"
    if not path.exists():
        proc = world.cli("config-ssh", "--ssh-config-file", str(path))
        assert proc.returncode == 0, proc.stderr
    return path


def test_config_ssh_idempotent_dry_run_and_preserving(world: World) -> None:
    path = world.tmp / "cfgtest" / "config"
    path.parent.mkdir()
    user = "Host *\n  ServerAliveInterval 7\n# no newline at end"
    path.write_text(user)
    dry = world.ok("config-ssh", "--ssh-config-file", str(path), "--dry-run")
    assert "+Host burrow.dev\n" in dry
    assert path.read_text() == user  # dry run wrote nothing
    out = world.ok("config-ssh", "--ssh-config-file", str(path))
    assert "ssh burrow.dev" in out
    text = path.read_text()
    assert text.startswith(user + "\n")
    assert "ProxyCommand env BURROW_CONFIG_DIR=" in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert "up to date" in world.ok("config-ssh", "--ssh-config-file", str(path))
    assert path.read_text() == text
    assert world.ok("config-ssh", "--ssh-config-file", str(path), "--dry-run") == ""
    # a symlinked config is edited in place: the link stays a link
    target = world.tmp / "cfgtest" / "dotfiles-config"
    target.write_text(user)
    link = world.tmp / "cfgtest" / "link"
    link.symlink_to(target)
    world.ok("config-ssh", "--ssh-config-file", str(link))
    assert link.is_symlink()
    assert "Host burrow.dev" in target.read_text()
    # a damaged block is refused, not guessed at
    path.write_text(text.replace("# ------------END-BURROW-------------\n", ""))
    proc = world.cli("config-ssh", "--ssh-config-file", str(path))
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "damaged" in proc.stderr


async def test_openssh_through_proxycommand(world: World, tmp_path: Path) -> None:
    """ssh runs a command with its exit code, scp of 50 MiB both ways is intact, -L works."""
    cfg = _ssh_config(world)
    workdir = tmp_path / "ws"
    workdir.mkdir()
    ssh = ["ssh", "-F", str(cfg), "-o", "BatchMode=yes"]
    async with in_test_agent(world, ssh_workdir=workdir) as agent:
        proc = await run(world, *ssh, "burrow.dev", "echo hello; exit 3")
        assert proc.returncode == 3, proc.stderr.decode()
        assert proc.stdout == b"hello\n"
        assert agent.clients  # the coordinator told the agent our key

        blob = os.urandom(50 << 20)
        src = tmp_path / "up.bin"
        src.write_bytes(blob)
        scp = ["scp", "-F", str(cfg), "-o", "BatchMode=yes"]
        proc = await run(world, *scp, str(src), "burrow.dev:up.bin")
        assert proc.returncode == 0, proc.stderr
        assert hashlib.sha256((workdir / "up.bin").read_bytes()).digest() == \
            hashlib.sha256(blob).digest()
        proc = await run(world, *scp, "burrow.dev:up.bin", str(tmp_path / "down.bin"))
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "down.bin").read_bytes() == blob

        # with WebSockets forced, the same
        proc = await run(world, *ssh, "burrow.dev", "cat | wc -c", env={
            "BURROW_FORCE_WEBSOCKETS": "1"})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == b"0"

        # ssh -L to an HTTP server "in the workspace"
        async with trio.open_nursery() as nursery:
            http_port = await _http_server(nursery)
            local = free_port()
            fwd = await trio.lowlevel.open_process(
                [*ssh, "-N", "-o", "ExitOnForwardFailure=yes",
                 "-L", f"127.0.0.1:{local}:127.0.0.1:{http_port}", "burrow.dev"],
                env=world.env, stdin=subprocess.DEVNULL,
            )
            try:
                reply = b""
                with trio.fail_after(20):
                    while not reply.startswith(b"HTTP/1.0 200"):
                        try:
                            reply = await _get(local, "/via-L")
                        except (OSError, trio.BrokenResourceError):
                            await trio.sleep(0.1)
                assert reply.endswith(b"you asked for /via-L")
            finally:
                fwd.kill()
                await fwd.wait()
            nursery.cancel_scope.cancel()


async def test_burrow_ssh_execs_openssh_and_propagates_the_exit_code(
    world: World, tmp_path: Path
) -> None:
    async with in_test_agent(world, ssh_workdir=tmp_path):
        proc = await burrow(world, "ssh", "dev", "--", "echo", "hi;", "exit", "4")
        assert proc.returncode == 4, proc.stderr
        assert proc.stdout == b"hi\n"
        # the agent's host key was pinned per workspace, and a second run checks it
        pinned = list((Path(world.env["BURROW_CONFIG_DIR"]) / "known_hosts.d").iterdir())
        assert len(pinned) == 1
        assert b" ssh-ed25519 " in pinned[0].read_bytes()
        proc = await burrow(world, "ssh", "dev", "true")
        assert proc.returncode == 0, proc.stderr
        assert b"warning" not in proc.stderr
        # a failed startup script is reported (by the ProxyCommand, on stderr), not fatal
        await trio.to_thread.run_sync(_report_lifecycle, world, "start_error")
        proc = await burrow(world, "ssh", "dev", "true")
        assert proc.returncode == 0, proc.stderr
        assert b"the startup script of dev failed (start_error)" in proc.stderr
        await trio.to_thread.run_sync(_report_lifecycle, world, "ready")
    proc = await burrow(world, "ssh", "nope")
    assert proc.returncode == 1
    assert len(proc.stderr.decode().strip().splitlines()) == 1, proc.stderr


async def test_burrow_ssh_interactive_on_a_pty(world: World, tmp_path: Path) -> None:
    """With a terminal, burrow ssh gives a PTY shell (tty says /dev/pts/N); exit code passes."""
    master, slave = os.openpty()
    async with in_test_agent(world, ssh_workdir=tmp_path):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "burrow.cli", "ssh", "dev"],
            stdin=slave, stdout=slave, stderr=slave, env={**world.env, "TERM": "dumb"},
        )
        os.close(slave)
        out = b""
        try:
            os.write(master, b"tty; echo answer=$((6*7)); exit 5\n")
            with trio.fail_after(30):
                while True:
                    await trio.lowlevel.wait_readable(master)
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:  # EIO: the pty closed
                        break
                    if not chunk:
                        break
                    out += chunk
                await proc.wait()
        finally:
            os.close(master)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 5, out
    assert b"answer=42" in out
    assert b"/dev/pts/" in out


async def test_agent_going_away_mid_session_is_one_line_from_the_proxycommand(
    world: World, tmp_path: Path
) -> None:
    cfg = _ssh_config(world)
    async with trio.open_nursery() as nursery:
        async with in_test_agent(world, ssh_workdir=tmp_path):
            proc = await trio.lowlevel.open_process(
                ["ssh", "-F", str(cfg), "-o", "BatchMode=yes", "burrow.dev",
                 "echo started; sleep 30"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=world.env,
                stdin=subprocess.DEVNULL,
            )
            assert proc.stdout is not None
            assert proc.stderr is not None
            with trio.fail_after(30):
                assert await proc.stdout.receive_some(100) == b"started\n"
        # the agent closed its tunnel endpoint (telling the client's session)
        err = b""
        with trio.fail_after(30):
            while chunk := await proc.stderr.receive_some(4096):
                err += chunk
            await proc.wait()
        nursery.cancel_scope.cancel()
    assert proc.returncode == 255
    assert b"burrow ssh: the tunnel to dev broke: " in err
    assert b"Traceback" not in err


async def test_ssh_stdio_errors_are_one_line_and_stdout_stays_clean(world: World) -> None:
    proc = await burrow(world, "ssh", "--stdio", "--wait-timeout", "2", "nope")
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert len(proc.stderr.decode().strip().splitlines()) == 1, proc.stderr
    assert b"Traceback" not in proc.stderr
    proc = await burrow(world, "ssh", "--stdio", "dev", "extra")
    assert proc.returncode == 2
    # no agent connected (none running now): waits showing the agent's state and the
    # tail of its startup log, then says so in one line
    await trio.to_thread.run_sync(_post_agent, world, "/logs",
                                  {"logs": [{"text": "installing the toolchain"}]})
    await trio.to_thread.run_sync(_post_agent, world, "/lifecycle", {"state": "starting"})
    proc = await burrow(world, "ssh", "--stdio", "--wait-timeout", "2.5", "dev")
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert b"did not connect in time" in proc.stderr
    assert b"burrow: waiting for agent main of dev to connect (agent: " in proc.stderr
    assert b"starting)" in proc.stderr
    assert b"  installing the toolchain\n" in proc.stderr
    await trio.to_thread.run_sync(_post_agent, world, "/lifecycle", {"state": "ready"})
    assert b"Traceback" not in proc.stderr


def _post_agent(world: World, path: str, body: dict[str, object]) -> None:
    """What the agent does: POST a report with its token."""
    req = urllib.request.Request(
        world.url + "/api/v2/workspaceagents/me" + path, method="POST",
        data=json.dumps(body).encode(),
        headers={"Burrow-Agent-Token": world.token, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status in (200, 201, 204)


def _report_lifecycle(world: World, state: str) -> None:
    _post_agent(world, "/lifecycle", {"state": state})


async def _http_server(nursery: trio.Nursery) -> int:
    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            path = data.split(b" ", 2)[1]
            body = b"you asked for " + path
            await stream.send_all(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                  % (len(body), body))

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def _get(port: int, path: str) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET %s HTTP/1.0\r\n\r\n" % path.encode())
        out = b""
        while chunk := await stream.receive_some(65536):
            out += chunk
    return out


async def test_port_forward_concurrent_requests_survive_an_agent_restart(
    world: World, tmp_path: Path
) -> None:
    """8 concurrent requests; then the agent restarts with a new key (the coordinator
    re-announces it) and the same port-forward process carries 8 more."""
    async with trio.open_nursery() as nursery:
        http_port = await _http_server(nursery)
        local, dead_local, dead_remote = free_port(), free_port(), free_port()
        # started before any agent: it waits for one
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "burrow.cli", "port-forward", "dev",
             "--tcp", f"{local}:{http_port}", "--tcp", f"{dead_local}:{dead_remote}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=world.env,
            stdin=subprocess.DEVNULL,
        )
        try:
            async with in_test_agent(world, ssh_workdir=tmp_path) as first:
                assert proc.stdout is not None
                with trio.fail_after(30):
                    line = await proc.stdout.receive_some(4096)
                assert f"Forwarding 127.0.0.1:{local} -> dev:{http_port}".encode() in line
                await _requests(local, "a")
                # nothing listens on the remote port: that connection just closes
                with trio.fail_after(10), contextlib.suppress(trio.BrokenResourceError):
                    assert await _get(dead_local, "/nobody") == b""
                await _requests(local, "a2")  # the others are unaffected
            async with in_test_agent(world, ssh_workdir=tmp_path) as second:
                assert second.endpoint.public_key != first.endpoint.public_key
                await _requests(local, "b")
            assert proc.returncode is None  # still serving
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
                with trio.move_on_after(10):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        nursery.cancel_scope.cancel()


async def _requests(port: int, tag: str) -> None:
    results: dict[int, bytes] = {}

    async def one(i: int) -> None:
        results[i] = await _get(port, f"/{tag}{i}")

    with trio.fail_after(30):
        async with trio.open_nursery() as reqs:
            for i in range(8):
                reqs.start_soon(one, i)
    for i in range(8):
        assert results[i].startswith(b"HTTP/1.0 200 OK"), results[i]
        assert results[i].endswith(b"you asked for /%s%d" % (tag.encode(), i))


async def test_direct_path_is_used_when_the_agent_advertises_one(
    world: World, tmp_path: Path
) -> None:
    async with in_test_agent(world, ssh_workdir=tmp_path, direct=True):
        proc = await burrow(world, "ping", "dev", "-n", "6", "--interval", "0.3")
        out = proc.stdout.decode()
        assert proc.returncode == 0, (out, proc.stderr)
        assert "pong from dev via direct in " in out, out


async def test_ping_speedtest_netcheck(world: World, tmp_path: Path) -> None:
    async with in_test_agent(world, ssh_workdir=tmp_path):
        proc = await burrow(world, "ping", "dev", "-n", "3", "--interval", "0.1")
        out = proc.stdout.decode()
        assert proc.returncode == 0, (out, proc.stderr)
        assert out.count("pong from dev via relay primary over derp in ") == 3, out
        assert "3 pings, 3 answered" in out
        proc = await burrow(world, "ping", "dev", "-n", "1", env={"BURROW_FORCE_WEBSOCKETS": "1"})
        assert "over websocket" in proc.stdout.decode(), proc.stdout

        proc = await burrow(world, "speedtest", "dev", "--size", "4")
        out = proc.stdout.decode()
        assert proc.returncode == 0, (out, proc.stderr)
        assert "upload   4 MiB in " in out
        assert "download 4 MiB in " in out

    proc = await burrow(world, "netcheck", "--count", "2")
    out = proc.stdout.decode()
    assert proc.returncode == 0, (out, proc.stderr)
    assert "(home)" in out
    assert "Home region: 1 (primary)" in out


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


async def test_transfers_survive_server_and_relay_restarts(tmp_path: Path) -> None:
    """The relay (embedded in burrow server) is stopped and started again in the middle of
    an upload through OpenSSH + ProxyCommand; the upload completes, sha256 equal.  Then a
    port-forward outlives a server restart and an agent restart after it."""
    port = free_port()
    with running_world(tmp_path / "w", listen=f"127.0.0.1:{port}") as world:
        cfg = _ssh_config(world)
        workdir = tmp_path / "ws"
        workdir.mkdir()
        async with in_test_agent(world, ssh_workdir=workdir):
            proc = await trio.lowlevel.open_process(
                ["ssh", "-F", str(cfg), "-o", "BatchMode=yes", "burrow.dev", "cat > up.bin"],
                stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=world.env,
            )
            digest = hashlib.sha256()
            try:
                assert proc.stdin is not None
                with trio.fail_after(90):
                    for phase in range(2):
                        for _ in range(4):
                            chunk = os.urandom(2 << 20)
                            digest.update(chunk)
                            await proc.stdin.send_all(chunk)
                        if phase == 0:
                            # the bytes reached the workspace, then the relay goes away
                            while _size(workdir / "up.bin") < 7 << 20:
                                await trio.sleep(0.05)
                            await trio.to_thread.run_sync(world.restart_server)
                    await proc.stdin.aclose()
                    await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == 0
            data = (workdir / "up.bin").read_bytes()
            assert len(data) == 16 << 20
            assert hashlib.sha256(data).digest() == digest.digest()

        # A long-lived port-forward rejoins the coordinator after coderd restarts, so
        # an agent that comes back afterwards (new key) learns it and serves it.
        async with trio.open_nursery() as nursery:
            http_port = await _http_server(nursery)
            local = free_port()
            async with in_test_agent(world, ssh_workdir=workdir):
                fwd = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "burrow.cli", "port-forward", "dev",
                     "--tcp", f"{local}:{http_port}"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=world.env,
                    stdin=subprocess.DEVNULL,
                )
                try:
                    assert fwd.stdout is not None
                    with trio.fail_after(30):
                        await fwd.stdout.receive_some(4096)
                    await _requests(local, "before")
                    await trio.to_thread.run_sync(world.restart_server)
                    await _requests(local, "between")  # the tunnel never needed coderd
                except BaseException:
                    fwd.kill()
                    raise
            try:
                async with in_test_agent(world, ssh_workdir=workdir):
                    await _requests(local, "after")
            finally:
                fwd.kill()
                await fwd.wait()
            nursery.cancel_scope.cancel()
