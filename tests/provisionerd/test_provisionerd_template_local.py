"""templates/local with real terraform: the agent process starts, stops and is deleted.

``burrow_binary`` is a tiny script standing in for ``burrow``: it records its
arguments and environment, then sleeps.  Every process the template starts is
killed by PID in ``finally`` even if an assertion fails.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import trio

from provisionerd import archive, terraform
from provisionerd.terraform import TerraformJob

pytestmark = pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform not installed")

TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "local"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def wait_dead(pid: int) -> None:
    with trio.fail_after(15):
        while alive(pid):
            await trio.sleep(0.05)


async def wait_file(path: Path) -> str:
    with trio.fail_after(15):
        while not path.exists() or not path.read_text():
            await trio.sleep(0.05)
    return path.read_text()


async def test_local_template_lifecycle(tmp_path: Path) -> None:
    data = tmp_path / "data"
    fake = tmp_path / "fake-burrow"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "$@" > "$HOME/../args"\n'
        'echo "$BURROW_AGENT_URL ${BURROW_AGENT_TOKEN:-no-token} $PWD" > "$HOME/../env"\n'
        'env | grep -c "^TF_" > "$HOME/../tf-vars"\n'
        "exec sleep 300\n"
    )
    fake.chmod(0o755)
    tpl = archive.pack(TEMPLATE)
    ws_root = data / "alice" / "dev"
    started: list[int] = []

    async def build(transition: str, state: bytes | None, n: int, token: str = "tok1") -> bytes:
        j = TerraformJob(
            template=tpl,
            transition=transition,  # type: ignore[arg-type]
            workspace_name="dev",
            workspace_owner="alice",
            agent_token=token,
            access_url="http://127.0.0.1:9",
            state=state,
            variables={"data_dir": str(data)},
        )
        logs: list[str] = []
        with trio.fail_after(60):
            res = await terraform.run(
                j,
                workdir=tmp_path / f"job{n}",
                on_log=lambda _s, line: logs.append(line),
                defaults={"burrow_binary": str(fake)},
            )
        assert not any(token in line for line in logs)
        if transition == "start":
            kinds = {r.address: (r.computational, r.ephemeral) for r in res.resources}
            assert kinds == {
                "terraform_data.home": (False, False),
                "terraform_data.agent[0]": (True, True),
            }
            assert [a.name for a in res.agents] == ["main"]
        return res.state

    try:
        state = await build("start", None, 1)
        pid = int(await wait_file(ws_root / "agent.pid"))
        started.append(pid)
        assert alive(pid)
        args = await wait_file(ws_root / "args")
        # The token reaches the agent only by file (0600), never its argv or environment.
        token_file = ws_root / "agent.token"
        assert args.split() == ["agent", "--supervise", "--url", "http://127.0.0.1:9",
                                "--token-file", str(token_file), "--run-dir", str(ws_root)]
        env = (await wait_file(ws_root / "env")).split()
        assert env == ["http://127.0.0.1:9", "no-token", str(ws_root / "home")]
        assert (await wait_file(ws_root / "tf-vars")).strip() == "0"
        assert token_file.read_text() == "tok1\n"
        assert token_file.stat().st_mode & 0o777 == 0o600
        # The agent is detached in its own session (survives terraform's group).
        assert os.getsid(pid) == pid
        (ws_root / "home" / "work.txt").write_text("keep me")

        state = await build("stop", state, 2)
        await wait_dead(pid)
        assert not (ws_root / "agent.pid").exists()
        assert not token_file.exists()
        assert (ws_root / "home" / "work.txt").read_text() == "keep me"

        (ws_root / "args").unlink()
        (ws_root / "env").unlink()
        state = await build("start", state, 3, token="tok2")
        pid2 = int(await wait_file(ws_root / "agent.pid"))
        started.append(pid2)
        assert pid2 != pid
        assert alive(pid2)
        assert "tok2" not in await wait_file(ws_root / "env")
        assert token_file.read_text() == "tok2\n"
        assert (ws_root / "home" / "work.txt").read_text() == "keep me"

        await build("delete", state, 4)
        await wait_dead(pid2)
        assert not ws_root.exists()
        assert data.exists()
    finally:
        for p in started:
            if alive(p):
                os.kill(p, signal.SIGKILL)
