"""The agent's SSH server against the real OpenSSH client.

Rules: loopback only, port 0, ``fail_after`` around every client run, every
process started here is waited for (or killed by PID).  The server is reached
through a TCP listener whose accepted sockets are wrapped in a plain
``trio.StapledStream``, so the server only ever sees a ``trio.abc.Stream`` -- the
shape a tunnel stream has.  Sessions use /bin/sh so no user rc file runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import trio
import trio_asyncio

from agent.ssh_adapter import HostKeyError, SSHServer, asyncio_loop, load_or_create_host_key
from tests.agent.agent_procs import alive
from tests.netutil import free_port

SSH = shutil.which("ssh")
SCP = shutil.which("scp")
pytestmark = pytest.mark.skipif(SSH is None or SCP is None, reason="OpenSSH client not installed")

CLIENT_OPTS = [
    "-F", "/dev/null",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes",
    "-o", "LogLevel=ERROR",
]


class Server:
    def __init__(self, ssh: SSHServer, port: int, workdir: Path):
        self.ssh = ssh
        self.port = port
        self.workdir = workdir

    def argv(self, *args: str) -> list[str]:
        assert SSH is not None
        return [SSH, *CLIENT_OPTS, "-p", str(self.port), *args, "dev@127.0.0.1"]

    async def run(
        self, *args: str, command: str, stdin: bytes = b"", timeout: float = 20
    ) -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(timeout):
            return await trio.run_process(
                [*self.argv(*args), command],
                stdin=stdin,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    workdir = tmp_path / "ws"
    workdir.mkdir()
    ssh = SSHServer(
        tmp_path / "keys" / "ssh_host_ed25519_key",
        shell="/bin/sh",
        env={"BURROW_MANIFEST_VAR": "from-manifest"},
        workdir=workdir,
    )

    async def handler(stream: trio.SocketStream) -> None:
        # Hide the socket: the server must work on any Stream.
        await ssh.serve_stream(trio.StapledStream(stream, stream), peer=("peer", 1))

    async with asyncio_loop(), trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        yield Server(ssh, listeners[0].socket.getsockname()[1], workdir)
        nursery.cancel_scope.cancel()


async def test_exit_status_stdout_and_stderr_are_separate(server: Server) -> None:
    result = await server.run(command="echo out; echo err >&2; exit 7")
    assert result.returncode == 7
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"


async def test_session_runs_in_workdir_with_manifest_and_client_env(server: Server) -> None:
    result = await server.run(
        "-o", "SetEnv=CLIENT_VAR=from-client",
        command='pwd; echo "$BURROW_MANIFEST_VAR $CLIENT_VAR $USER"',
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == str(server.workdir)
    assert lines[1].startswith("from-manifest from-client ")


async def test_killed_by_signal_is_reported(server: Server) -> None:
    result = await server.run(command="kill -TERM $$")
    assert result.returncode == 255  # OpenSSH's code for a remote exit-signal
    assert server.ssh.stats.snapshot().sessions_total >= 1


async def test_stdin_to_stdout_several_mib_intact(server: Server) -> None:
    data = os.urandom(6 * 1024 * 1024 + 17)
    result = await server.run(command="cat", stdin=data)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(data).hexdigest()
    snap = server.ssh.stats.snapshot()
    assert snap.bytes_in > len(data)
    assert snap.bytes_out > len(data)


async def test_stdin_eof_reaches_the_command(server: Server) -> None:
    result = await server.run(command="wc -c", stdin=b"12345")
    assert result.stdout.strip() == b"5"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def test_scp_50_mib_both_ways(server: Server, tmp_path: Path) -> None:
    assert SCP is not None
    src = tmp_path / "src.bin"
    with src.open("wb") as f:
        for _ in range(50):
            f.write(os.urandom(1024 * 1024))
    scp = [SCP, *CLIENT_OPTS, "-P", str(server.port)]
    with trio.fail_after(60):
        # Relative remote path: lands in the workspace dir (SFTP rooted there).
        await trio.run_process([*scp, str(src), "dev@127.0.0.1:up.bin"])
        assert sha256_file(server.workdir / "up.bin") == sha256_file(src)
        back = tmp_path / "back.bin"
        await trio.run_process([*scp, f"dev@127.0.0.1:{server.workdir}/up.bin", str(back)])
    assert sha256_file(back) == sha256_file(src)


async def serve_http(nursery: trio.Nursery, body: bytes) -> int:
    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            with trio.move_on_after(10):
                while b"\r\n\r\n" not in request:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    request += chunk
            head = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
            await stream.send_all(head + body)

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def http_get(port: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
    return response


async def test_local_forward_reaches_http_server(server: Server, nursery: trio.Nursery) -> None:
    http_port = await serve_http(nursery, b"hello through -L")
    local = free_port()
    forward = f"{local}:127.0.0.1:{http_port}"
    argv = server.argv("-N", "-o", "ExitOnForwardFailure=yes", "-L", forward)
    proc = await trio.lowlevel.open_process(argv)
    try:
        with trio.fail_after(20):
            while True:  # until the forward listens (bounded by fail_after)
                try:
                    response = await http_get(local)
                    break
                except OSError:
                    assert proc.poll() is None, "ssh -L exited early"
                    await trio.sleep(0.05)
            assert response.endswith(b"hello through -L")
            # several concurrent requests over the one SSH connection
            results: list[bytes] = []

            async def one() -> None:
                results.append(await http_get(local))

            async with trio.open_nursery() as inner:
                for _ in range(8):
                    inner.start_soon(one)
            assert all(r.endswith(b"hello through -L") for r in results)
            assert len(results) == 8
    finally:
        proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()


async def test_remote_forward_reaches_client_side_http_server(
    server: Server, nursery: trio.Nursery
) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash needed for /dev/tcp")
    http_port = await serve_http(nursery, b"hello through -R")
    remote = free_port()
    script = (
        f"exec 3<>/dev/tcp/127.0.0.1/{remote}; "
        'printf "GET / HTTP/1.0\\r\\n\\r\\n" >&3; cat <&3'
    )
    result = await server.run(
        "-o", "ExitOnForwardFailure=yes", "-R", f"{remote}:127.0.0.1:{http_port}",
        command=f"bash -c '{script}'",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(b"hello through -R")


async def test_pty_session_runs_command_on_a_terminal(server: Server) -> None:
    result = await server.run("-tt", command="tty; test -t 0 && echo isatty; exit 3")
    assert result.returncode == 3
    out = result.stdout.decode()
    assert "/dev/pts/" in out
    assert "isatty" in out


async def test_client_going_away_hangs_up_the_command(server: Server, tmp_path: Path) -> None:
    pidfile = server.workdir / "pid"
    proc = await trio.lowlevel.open_process(
        [*server.argv(), f"echo $$ > {pidfile}; exec sleep 1000"]
    )
    try:
        with trio.fail_after(20):
            while not pidfile.exists() or not pidfile.read_text().strip():
                await trio.sleep(0.05)
            pid = int(pidfile.read_text())
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            while alive(pid):  # the agent must SIGHUP the remote command
                await trio.sleep(0.05)
    finally:
        proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()


async def test_garbage_instead_of_ssh_closes_only_that_connection(server: Server) -> None:
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\n\r\n" * 10)
            while await stream.receive_some(4096):
                pass
    result = await server.run(command="echo still-serving")
    assert result.stdout == b"still-serving\n"


async def asyncssh_session(server: Server, command: str, script: Any) -> tuple[str, int | None]:
    """Run ``command`` on a PTY with asyncssh's client (it can send window changes
    and signals, which OpenSSH's client cannot do non-interactively)."""

    async def run() -> tuple[str, int | None]:
        async with asyncssh.connect(
            "127.0.0.1", server.port, username="dev", known_hosts=None,
            client_keys=None, agent_path=None,
        ) as conn:
            proc = await conn.create_process(command, term_type="xterm", term_size=(80, 24))
            await script(proc)
            out, _ = await proc.communicate()
            return out, proc.exit_status

    with trio.fail_after(20):
        result: tuple[str, int | None] = await trio_asyncio.aio_as_trio(run)()
    return result


async def test_window_change_reaches_the_terminal(server: Server) -> None:
    async def script(proc: Any) -> None:
        assert "24 80" in await proc.stdout.readline()
        proc.change_terminal_size(100, 40)
        proc.stdin.write("\n")

    out, status = await asyncssh_session(server, "stty size; read x; stty size", script)
    assert "40 100" in out
    assert status == 0


async def test_signal_reaches_the_command(server: Server) -> None:
    async def script(proc: Any) -> None:
        assert "ready" in await proc.stdout.readline()
        proc.send_signal("INT")

    command = "trap 'echo got-int; exit 5' INT; echo ready; while :; do sleep 0.05; done"
    out, status = await asyncssh_session(server, command, script)
    assert "got-int" in out
    assert status == 5


async def test_login_gate_holds_sessions_until_startup_finishes(server: Server) -> None:
    gate = trio.Event()
    server.ssh.login_gate = gate
    result: list[subprocess.CompletedProcess[bytes]] = []

    async def client() -> None:
        result.append(await server.run(command="echo in"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        await trio.sleep(0.5)
        assert not result  # still held
        gate.set()
    assert result[0].returncode == 0
    assert result[0].stdout == b"in\n"
    assert b"waiting for the workspace's startup script" in result[0].stderr


async def test_agent_token_never_reaches_a_session(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BURROW_AGENT_TOKEN", "secret-token")
    result = await server.run(command='echo "token=${BURROW_AGENT_TOKEN-unset}"')
    assert result.stdout == b"token=unset\n"


async def test_terraform_and_burrow_secrets_never_reach_a_session(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what Terraform hands the template's local-exec, and secrets of burrow's flags
    for name in ("TF_VAR_burrow_agent_token", "TF_VAR_cloud_key", "TF_CLI_CONFIG_FILE",
                 "BURROW_TOKEN_FILE", "BURROW_PSK", "BURROW_PASSWORD", "BURROW_MESH_KEY"):
        monkeypatch.setenv(name, "secret-value")
    monkeypatch.setenv("BURROW_AGENT_URL", "http://coderd.example")  # not a secret
    result = await server.run(command="env")
    lines = result.stdout.decode().splitlines()
    assert [line for line in lines if "secret-value" in line] == []
    assert "BURROW_AGENT_URL=http://coderd.example" in lines
    assert "BURROW_MANIFEST_VAR=from-manifest" in lines


async def test_a_session_group_is_recorded_while_it_has_members(
    server: Server, tmp_path: Path
) -> None:
    from agent import procgroups

    marker = tmp_path / "leader"
    done: list[subprocess.CompletedProcess[bytes]] = []

    async def client() -> None:
        done.append(await server.run(command=f'echo $$ > "{marker}"; sleep 1'))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        with trio.fail_after(10):
            while not (marker.exists() and marker.read_text().strip()):
                await trio.sleep(0.02)
        leader = int(marker.read_text())
        with trio.fail_after(5):  # recorded right after the spawn, maybe after the echo ran
            while leader not in [t.pid for t in procgroups.tracked.targets()]:
                await trio.sleep(0.01)
        assert os.getpgid(leader) == leader
    assert done[0].returncode == 0
    assert leader not in [t.pid for t in procgroups.tracked.targets()]


async def test_agent_forwarding(server: Server, tmp_path: Path) -> None:
    agent_bin, add_bin = shutil.which("ssh-agent"), shutil.which("ssh-add")
    keygen = shutil.which("ssh-keygen")
    if agent_bin is None or add_bin is None or keygen is None:
        pytest.skip("ssh-agent/ssh-add not installed")
    sock = tmp_path / "agent.sock"
    key = tmp_path / "id_test"
    await trio.run_process([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "fwd-test",
                            "-f", str(key)])
    agent = await trio.lowlevel.open_process([agent_bin, "-D", "-a", str(sock)])
    try:
        with trio.fail_after(10):
            while not sock.exists():
                await trio.sleep(0.02)
            env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
            await trio.run_process([add_bin, "-q", str(key)], env=env)
            result = await trio.run_process(
                [*server.argv("-A"), "ssh-add -l"], env=env, capture_stdout=True, check=False
            )
        assert result.returncode == 0
        assert b"fwd-test" in result.stdout
    finally:
        agent.kill()
        with trio.CancelScope(shield=True):
            await agent.wait()


def test_host_key_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "k" / "host_key"
    first = load_or_create_host_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = load_or_create_host_key(path)
    assert first.get_fingerprint() == second.get_fingerprint()
    assert not [p for p in path.parent.iterdir() if p.name != "host_key"]
    path.chmod(0o644)
    load_or_create_host_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unusable_host_key_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "host_key"
    path.write_text("not a key")
    with pytest.raises(HostKeyError, match="cannot use SSH host key"):
        SSHServer(path)
