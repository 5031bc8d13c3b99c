"""The CLI against a real `burrow server` subprocess (port 0, temp data dir)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.burrow.server_proc import cli_env, wait_listening
from tests.coderd.pgserver import PgServer, run_pg_server

TF = 'variable "burrow_workspace_transition" {\n  type = string\n}\n'


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    env: dict[str, str]


def start_server(tmp: Path, *extra: str) -> Server:
    env = cli_env(tmp)
    proc = subprocess.Popen(
        [sys.executable, "-m", "burrow.cli", "server", "--listen", "127.0.0.1:0",
         "--data-dir", str(tmp / "data"), "--provisioner-daemons", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        return Server(proc, wait_listening(proc), env)
    except RuntimeError as exc:
        pytest.fail(str(exc))


def stop_server(server: Server) -> str:
    """Stop the server; returns what it logged."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            return server.proc.communicate(timeout=15)[1]
        except subprocess.TimeoutExpired:
            server.proc.kill()
    return server.proc.communicate(timeout=10)[1]


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    yield from run_pg_server()


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    extra: list[str] = []
    if request.param == "postgres":
        extra = ["--postgres-url", request.getfixturevalue("pg").fresh_database()]
    s = start_server(tmp_path, *extra)
    try:
        yield s
    finally:
        stop_server(s)


def cli(server: Server, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "burrow.cli", *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={**server.env, **(env or {})}, stdin=subprocess.DEVNULL,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_cli_flow_against_a_real_server(server: Server, tmp_path: Path) -> None:
    # not logged in yet
    assert "not logged in" in one_line_error(cli(server, "whoami"))
    # on a fresh server, login creates the owner
    out = ok(cli(server, "login", server.url, "--username", "admin",
                 env={"BURROW_PASSWORD": "a good password"}))
    assert "Created the owner account" in out
    assert "a good password" not in out
    session = Path(server.env["BURROW_CONFIG_DIR"]) / "session.json"
    assert session.stat().st_mode & 0o777 == 0o600
    assert "admin (owner)" in ok(cli(server, "whoami"))
    # a second login with a wrong password fails in one line
    err = one_line_error(cli(server, "login", server.url, "--username", "admin",
                             "--password", "wrong password"))
    assert "incorrect username or password" in err
    # templates
    tdir = tmp_path / "my template"
    (tdir / ".terraform").mkdir(parents=True)
    (tdir / "main.tf").write_text(TF)
    (tdir / ".terraform" / "junk").write_text("x")
    assert "No templates" in ok(cli(server, "templates", "list"))
    assert "invalid template name" in one_line_error(
        cli(server, "templates", "push", str(tdir)), code=2)
    assert "KEY=VALUE" in one_line_error(
        cli(server, "templates", "push", str(tdir), "--name", "x", "--tag", "oops"), code=2)
    out = ok(cli(server, "templates", "push", str(tdir), "--name", "local"))
    assert "version v1 (1 files" in out
    assert "local" in ok(cli(server, "templates", "list"))
    # workspaces
    out = ok(cli(server, "create", "dev", "--template", "local", "--var", "cpu=2"))
    assert "build 1 (start) queued" in out
    assert "no such template" in one_line_error(cli(server, "create", "x", "--template", "nope"))
    assert "KEY=VALUE" in one_line_error(
        cli(server, "create", "x", "--template", "local", "--var", "oops"), code=2)
    listing = ok(cli(server, "list"))
    assert "dev" in listing
    assert "pending" in listing
    shown = ok(cli(server, "show", "dev"))
    assert "Status:     pending" in shown
    # no daemons: the start build stays queued, so a stop is refused with the reason
    assert "in progress" in one_line_error(cli(server, "stop", "dev"))
    assert "no such workspace" in one_line_error(cli(server, "start", "nope"))
    ok(cli(server, "logs", "dev"))
    # logout forgets the session and invalidates the token on the server
    token = json.loads(session.read_text())["token"]
    other = {"BURROW_CONFIG_DIR": str(tmp_path / "other-config")}
    out = ok(cli(server, "login", server.url, "--token", token, env=other))
    assert "as admin with a token" in out
    assert "admin (owner)" in ok(cli(server, "whoami", env=other))
    assert "invalid session token" in one_line_error(
        cli(server, "login", server.url, "--token", "0123456789-forged", env=other))
    ok(cli(server, "logout"))
    assert not session.exists()
    assert "not logged in" in one_line_error(cli(server, "list"))
    logged = stop_server(server)
    assert "burrow server stopped" in logged
    for secret in ("a good password", token, token.split("-", 1)[1]):
        assert secret not in logged


def test_cli_usage_and_connection_errors(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    fake = Server(None, "http://127.0.0.1:9", env)  # type: ignore[arg-type]
    err = one_line_error(cli(fake, "login", "http://127.0.0.1:9", "--username", "a",
                             "--password", "b"))
    assert "cannot reach" in err
    assert one_line_error(cli(fake, "login", "ftp://x"), code=2)
    assert one_line_error(cli(fake, "server", "--log-format", "xml"), code=2)
    assert one_line_error(cli(fake, "server", "--provisioner-daemons", "many"), code=2)
    assert one_line_error(cli(fake, "server", "--provisioner-tags", "zone"), code=2)
    err = one_line_error(cli(fake, "server", "--listen", "127.0.0.1:0", "--data-dir",
                             str(tmp_path / "d"), "--postgres-url",
                             "postgresql://nobody@127.0.0.1:9/x"))
    assert "cannot connect to postgres" in err
    proc = cli(fake, "server", "--listen", "192.0.2.1:0",
               "--data-dir", str(tmp_path / "d"), "--provisioner-daemons", "0")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "cannot listen on 192.0.2.1:0" in proc.stderr.strip().splitlines()[-1]
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_option: 1\n")
    assert "unknown option" in one_line_error(cli(fake, "server", "--config", str(bad)), code=2)
    bad.write_text("listen: [unclosed\n")
    assert "not valid YAML" in one_line_error(cli(fake, "server", "--config", str(bad)), code=2)


def test_server_yaml_config_env_and_ctrl_c(tmp_path: Path) -> None:
    cfg = tmp_path / "server.yaml"
    cfg.write_text("listen: 127.0.0.1:1\nlog-format: json\nprovisioner_daemons: 0\n"
                   "provisioner-tags: {zone: eu}\n")
    env = cli_env(tmp_path)
    env["BURROW_LISTEN"] = "127.0.0.1:0"  # the environment beats the file
    proc = subprocess.Popen(
        [sys.executable, "-m", "burrow.cli", "server", "--config", str(cfg),
         "--data-dir", str(tmp_path / "data"), "--prometheus-address", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        assert not line.strip().endswith(":1")
        # the metrics listener is announced in a (JSON) log line
        assert proc.stderr is not None
        metrics_url = ""
        for _ in range(50):
            log_line = proc.stderr.readline()
            if "prometheus metrics on " in log_line:
                record = json.loads(log_line)  # --log-format json from the YAML file
                assert record["level"] == "info"
                metrics_url = record["msg"].rsplit(" ", 1)[1]
                break
        import urllib.request

        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
            text = resp.read().decode()
        assert "burrow_provisioner_jobs" in text
        assert "burrow_derp_clients_connected" in text
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert "burrow server stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


TEMPLATE_LOCAL = Path(__file__).resolve().parents[2] / "templates" / "local"


def test_full_flow_with_real_terraform(tmp_path: Path) -> None:
    """push -> create -> build succeeds -> stop -> start -> delete, built-in daemons."""
    import shutil

    if shutil.which("terraform") is None:
        pytest.skip("terraform is not installed (bash .ci/setup warns about it)")
    server = start_server(tmp_path, "--provisioner-daemons", "2")
    try:
        ok(cli(server, "login", server.url, "--username", "admin", "--password", "password123"))
        ok(cli(server, "templates", "push", str(TEMPLATE_LOCAL)))
        ws_dir = tmp_path / "ws"
        ok(cli(server, "create", "dev", "--template", "local", "--var", f"data_dir={ws_dir}"))
        home = ws_dir / "admin" / "dev" / "home"
        # the first start comes from `create`; then each command queues one build
        for command, transition in ((None, "start"), ("stop", "stop"), ("start", "start"),
                                    ("delete", "delete")):
            if command is not None:
                ok(cli(server, command, "dev"))
            proc = cli(server, "logs", "dev", "--follow")
            assert proc.returncode == 0, (transition, proc.stdout[-2000:], proc.stderr[-2000:])
            assert f"{transition}: succeeded" in proc.stderr
            if transition == "start":
                shown = ok(cli(server, "show", "dev"))
                assert "Status:     running" in shown
                assert "agent     main" in shown
                assert "terraform_data.home  peripheral, persistent" in shown
                assert home.is_dir()
            elif transition == "stop":
                assert "Status:     stopped" in ok(cli(server, "show", "dev"))
                assert home.is_dir()  # persistent across stop
        assert "No workspaces" in ok(cli(server, "list"))
        assert not (ws_dir / "admin" / "dev").exists()
    finally:
        stop_server(server)
        for pidfile in (tmp_path / "ws").rglob("agent.pid"):  # a failed run's agent
            with contextlib.suppress(ValueError, OSError):
                os.killpg(int(pidfile.read_text().strip()), signal.SIGKILL)
