"""The wheel, installed as a user installs it, works away from the checkout.

Builds the wheel from a copy of the source tree (``pip wheel --no-deps``,
build isolation as for a user), installs it into a fresh virtualenv under
``tmp_path``, and from a working directory outside the checkout, with no
``PYTHONPATH`` and ``HOME`` in ``tmp_path``, runs what a user runs first:
``burrow --version``, ``burrow server`` (to readiness and ``/buildinfo``),
and ``burrow up`` until ``burrow ssh dev -- true`` succeeds.  Everything it
starts is stopped by pid at the end, pass or fail: the server ``burrow up``
detached (``server.pid``) and the agent the template detached with setsid
(``agent.pid``, a process group).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed"),
]

IGNORED = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__",
                                 ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis",
                                 ".import_linter_cache", ".burrow")


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


def ok(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    proc = run(args, env, cwd, timeout)
    assert proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stdout


def _stop_pid(pid: int, group: bool) -> None:
    kill = os.killpg if group else os.kill
    with contextlib.suppress(OSError):
        kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.1)
    with contextlib.suppress(OSError):
        kill(pid, signal.SIGKILL)


def _stop_pid_files(home: Path, data_dir: Path) -> None:
    # The agents first (their server would otherwise see them drop), each a
    # setsid process group started by the template.
    for pid_file in home.glob(".local/share/burrow/workspaces/*/*/agent.pid"):
        with contextlib.suppress(OSError, ValueError):
            _stop_pid(int(pid_file.read_text().strip()), group=True)
    with contextlib.suppress(OSError, ValueError):
        _stop_pid(int((data_dir / "server.pid").read_text().strip()), group=False)


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], Path]]:
    """(venv bin dir, environment, working dir), all outside the checkout."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=IGNORED)
    dist = tmp_path / "dist"
    ok([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
       dict(os.environ), tmp_path, timeout=600)
    wheels = sorted(dist.glob("burrow_workspaces-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp_path / "venv"
    ok([sys.executable, "-m", "venv", str(venv)], dict(os.environ), tmp_path)
    ok([str(venv / "bin" / "pip"), "install", "-q", str(wheels[0])], dict(os.environ), tmp_path,
       timeout=600)
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    here = Path(sys.executable).parent
    path = [str(venv / "bin")] + [p for p in os.environ.get("PATH", "").split(os.pathsep)
                                  if p and Path(p) != here]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BURROW_", "XDG_", "PYTHON")) and k != "VIRTUAL_ENV"}
    env.update(HOME=str(home), PATH=os.pathsep.join(path), CHECKPOINT_DISABLE="1")
    try:
        yield venv / "bin", env, work
    finally:
        _stop_pid_files(home, tmp_path / "up")


def _listening_url(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = proc.stdout.readline()
            if not line:
                break
            if "listening on " in line:
                return line.strip().rsplit(" ", 1)[1]
    finally:
        sel.close()
    raise AssertionError("burrow server printed no 'listening on' line")


def test_installed_wheel_runs_outside_the_checkout(
        installed: tuple[Path, dict[str, str], Path], tmp_path: Path) -> None:
    bin_dir, env, work = installed
    python = str(bin_dir / "python")

    # The packages, their data and the version come from the venv, not the checkout.
    where = ok([python, "-c", "import json, burrow.commands, burrow.access, coderd.api, "
                "coderd.store, importlib.resources as r, burrow; print(json.dumps("
                "[burrow.__file__, burrow.__version__, "
                "r.files('burrow').joinpath('templates/local/main.tf').is_file(), "
                "len([p for p in r.files('coderd.store.migrations.sqlite').iterdir() "
                "if p.name.endswith('.sql')])]))"], env, work)
    path, version, has_template, migrations = json.loads(where)
    assert Path(path).is_relative_to(tmp_path / "venv"), path
    assert has_template
    assert migrations > 0
    assert not version.endswith("+source")
    assert ok([str(bin_dir / "burrow"), "--version"], env, work).strip() == f"burrow {version}"
    assert ok([str(bin_dir / "burrow"), "version"], env, work).strip() == f"burrow {version}"

    # burrow server, to readiness; /buildinfo tells the version (and not Python's).
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - the server writes it until stopped
    server = subprocess.Popen(
        [str(bin_dir / "burrow"), "server", "--listen", "127.0.0.1:0",
         "--data-dir", str(tmp_path / "srv"), "--provisioner-daemons", "0"],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True, env=env,
        cwd=work)
    log.close()
    try:
        url = _listening_url(server)
        with urllib.request.urlopen(url + "/api/v2/buildinfo", timeout=10) as resp:
            assert json.loads(resp.read()) == {"version": version}
        assert f"burrow server {version} serving on {url}" in (tmp_path / "server.log").read_text()
    finally:
        _stop_pid(server.pid, group=False)
        server.wait(10)
    assert server.returncode == 0, (tmp_path / "server.log").read_text()[-2000:]

    # burrow up with the built-in template, then a command in the workspace.
    up = run([str(bin_dir / "burrow"), "up", "--data-dir", str(tmp_path / "up"),
              "--listen", "127.0.0.1:0", "--timeout", "180"], env, work, timeout=400)
    server_log = tmp_path / "up" / "server.log"
    assert up.returncode == 0, (up.stdout[-3000:], up.stderr[-3000:],
                                server_log.read_text()[-3000:] if server_log.exists() else "")
    pushed = next(line for line in up.stdout.splitlines() if "Pushed template 'local'" in line)
    assert str(tmp_path / "venv") in pushed, pushed  # the template shipped in the wheel
    ssh = run([str(bin_dir / "burrow"), "ssh", "dev", "--", "true"], env, work, timeout=120)
    assert ssh.returncode == 0, (ssh.stdout[-2000:], ssh.stderr[-2000:])
