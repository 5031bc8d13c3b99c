"""Regression wall, attack class: the agent token leaking into the workspace.

The token authenticates a workspace's agent to coderd.  Terraform hands it to
the template as ``TF_VAR_burrow_agent_token``; before the fix that variable
(with the rest of Terraform's environment) passed through templates/local to
the agent and to every shell of the workspace.  Pinned here:

* a session's ``env`` has neither the token nor any ``TF_*`` variable, nor a
  token-bearing ``BURROW_*`` one;
* the token reaches the agent as a file only: ``agent.token`` in the
  workspace dir (outside home), mode 0600; the supervisor's and the agent's
  argv and initial environment (``/proc/PID/environ``) do not hold it, nor
  does agent.log;
* startup and shutdown scripts get the same scrubbed environment.

Real server, real Terraform, real ``burrow agent``, real OpenSSH; the
server and agents are killed by pid on teardown (``open_site``).
"""

from __future__ import annotations

import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from agent.environ import is_secret
from agent.scripts import LogLine, run_script
from agent.supervise import CHILD_PID_FILE
from tests.e2e.e2e_site import Site, open_site

needs_e2e = pytest.mark.skipif(shutil.which("terraform") is None or shutil.which("ssh") is None,
                               reason="terraform or the OpenSSH client is not installed")
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with open_site(tmp_path_factory.mktemp("e2e-token"), "dev") as s:
        yield s


def token_of(site: Site) -> str:
    return (site.root("dev") / "agent.token").read_text().strip()


@needs_e2e
def test_a_session_env_has_no_token_and_no_terraform_variables(site: Site) -> None:
    token = token_of(site)
    assert len(token) >= 16
    proc = site.ssh("burrow.dev", "env")
    assert proc.returncode == 0, proc.stderr
    env = proc.stdout.decode()
    assert token not in env
    names = [line.split("=", 1)[0] for line in env.splitlines() if "=" in line]
    assert [n for n in names if n.startswith("TF_")] == []
    assert [n for n in names if is_secret(n)] == []
    assert "BURROW_AGENT_TOKEN" not in names


@needs_e2e
def test_the_token_is_a_0600_file_and_in_no_argv_environ_or_log(site: Site) -> None:
    root = site.root("dev")
    token_file = root / "agent.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert not token_file.is_relative_to(root / "home")
    token = token_of(site).encode()
    for pid_file in (root / "agent.pid", root / CHILD_PID_FILE):
        pid = int(pid_file.read_text())
        for what in ("cmdline", "environ"):
            data = Path(f"/proc/{pid}/{what}").read_bytes()
            assert token not in data, (pid_file.name, what)
            assert b"TF_VAR_" not in data, (pid_file.name, what)
    assert token not in (root / "agent.log").read_bytes()


async def test_scripts_get_the_scrubbed_environment(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TF_VAR_burrow_agent_token", "BURROW_AGENT_TOKEN", "BURROW_TOKEN_FILE"):
        monkeypatch.setenv(name, "the-secret")
    lines: list[str] = []

    async def collect(batch: Sequence[LogLine]) -> None:
        lines.extend(line.text for line in batch)

    result = await run_script("env", cwd=tmp_path, env={"FROM_MANIFEST": "1"}, timeout=10,
                              on_output=collect)
    assert result.exit_code == 0
    assert "FROM_MANIFEST=1" in lines
    assert [line for line in lines if "the-secret" in line] == []
