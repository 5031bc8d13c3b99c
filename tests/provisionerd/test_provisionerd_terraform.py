"""The terraform runner, with real terraform, on small templates written here.

Rules: real ``terraform`` processes in temp dirs; every process a test starts
is killed by PID in a ``finally``; ``trio.fail_after`` bounds every run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from provisionerd import archive, terraform
from provisionerd.terraform import TerraformJob

pytestmark = pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform not installed")


def tar_of(tmp_path: Path, files: dict[str, str]) -> bytes:
    src = tmp_path / "template-src"
    src.mkdir(exist_ok=True)
    for name, text in files.items():
        (src / name).write_text(text)
    return archive.pack(src)


def job(template: bytes, transition: str = "start", **kw: object) -> TerraformJob:
    return TerraformJob(
        template=template,
        transition=transition,  # type: ignore[arg-type]
        workspace_name="ws1",
        workspace_owner="alice",
        agent_token="tok-secret",
        access_url="http://127.0.0.1:1",
        **kw,  # type: ignore[arg-type]
    )


ECHO_TF = """
variable "burrow_workspace_name" { type = string }
variable "burrow_workspace_owner" { type = string }
variable "burrow_workspace_transition" { type = string }
variable "burrow_agent_token" {
  type = string
  sensitive = true
}
variable "burrow_access_url" { type = string }
variable "greeting" { default = "none" }

resource "terraform_data" "disk" {
  input = "${var.burrow_workspace_owner}/${var.burrow_workspace_name}"
  provisioner "local-exec" {
    command = "echo greeting=$G transition=$T url=$U"
    environment = {
      G = var.greeting
      T = var.burrow_workspace_transition
      U = var.burrow_access_url
    }
  }
}

resource "terraform_data" "vm" {
  count = var.burrow_workspace_transition == "start" ? 1 : 0
  input = "vm"
}

resource "terraform_data" "net" {
  input = "net"
}

output "burrow_agents" {
  value = [{ name = "main", resource = "terraform_data.vm", os = "linux" }]
}
output "burrow_ephemeral" { value = ["terraform_data.net"] }
"""


async def run(tmp_path: Path, j: TerraformJob, sub: str, **kw: object) -> tuple[
    terraform.RunResult, list[tuple[str, str]]
]:
    logs: list[tuple[str, str]] = []
    with trio.fail_after(60):
        result = await terraform.run(
            j,
            workdir=tmp_path / sub,
            on_log=lambda s, line: logs.append((s, line)),
            **kw,  # type: ignore[arg-type]
        )
    return result, logs


async def test_start_stop_delete_records_resources_and_agents(tmp_path: Path) -> None:
    tpl = tar_of(tmp_path, {"main.tf": ECHO_TF})
    res, logs = await run(tmp_path, job(tpl, variables={"greeting": "hello"}), "job1")
    lines = [line for _, line in logs]
    assert any("greeting=hello transition=start url=http://127.0.0.1:1" in x for x in lines)
    assert any(x.startswith("$ terraform init") for x in lines)
    assert not any("tok-secret" in x for x in lines)
    by_addr = {r.address: r for r in res.resources}
    assert set(by_addr) == {"terraform_data.disk", "terraform_data.vm[0]", "terraform_data.net"}
    vm = by_addr["terraform_data.vm[0]"].to_json()
    assert vm == {
        "address": "terraform_data.vm[0]",
        "type": "terraform_data",
        "name": "vm",
        "kind": "computational",
        "lifetime": "ephemeral",
    }
    assert by_addr["terraform_data.disk"].to_json()["kind"] == "peripheral"
    assert by_addr["terraform_data.disk"].to_json()["lifetime"] == "persistent"
    assert by_addr["terraform_data.net"].ephemeral  # marked by the burrow_ephemeral output
    assert [a.to_json() for a in res.agents] == [
        {"name": "main", "resource": "terraform_data.vm", "os": "linux"}
    ]
    state = json.loads(res.state)
    assert len(state["resources"]) == 3

    # Stop with the prior state: the ephemeral vm goes away, the disk stays.
    res2, _ = await run(tmp_path, job(tpl, "stop", state=res.state), "job2")
    assert {r.address for r in res2.resources} == {"terraform_data.disk", "terraform_data.net"}

    # Delete destroys everything.
    res3, logs3 = await run(tmp_path, job(tpl, "delete", state=res2.state), "job3")
    assert res3.resources == []
    assert json.loads(res3.state)["resources"] == []
    assert any(x.startswith("$ terraform destroy") for _, x in logs3)


async def test_failing_template_raises_with_terraform_message(tmp_path: Path) -> None:
    tpl = tar_of(
        tmp_path,
        {"main.tf": 'resource "terraform_data" "x" {\n  provisioner "local-exec" {\n'
         '    command = "echo about to fail; exit 3"\n  }\n}\n'},
    )
    with pytest.raises(terraform.TerraformFailed) as info:
        await run(tmp_path, job(tpl), "job")
    assert "Error:" in info.value.message
    assert "exit status 3" in info.value.message
    # The tainted resource is in the state terraform left behind.
    assert info.value.state is not None
    assert b"terraform_data" in info.value.state


async def test_syntax_error_fails_init_with_message(tmp_path: Path) -> None:
    tpl = tar_of(tmp_path, {"main.tf": 'resource "terraform_data" {\n'})
    logs: list[tuple[str, str]] = []
    with pytest.raises(terraform.TerraformFailed) as info, trio.fail_after(60):
        await terraform.run(
            job(tpl), workdir=tmp_path / "w", on_log=lambda s, x: logs.append((s, x))
        )
    assert "Error:" in info.value.message
    assert any(s == "stderr" and "Error:" in x for s, x in logs)


async def test_missing_terraform_is_typed_error(tmp_path: Path) -> None:
    tpl = tar_of(tmp_path, {"main.tf": ECHO_TF})
    with pytest.raises(terraform.TerraformNotFound):
        await run(tmp_path, job(tpl), "a", terraform=str(tmp_path / "no-such-terraform"))
    with pytest.raises(terraform.TerraformNotFound):
        await run(tmp_path, job(tpl), "b", terraform="burrow-no-such-terraform")


def archive_without_tf(tmp_path: Path) -> bytes:
    src = tmp_path / "no-tf"
    src.mkdir()
    (src / "README").write_text("x")
    return archive.pack(src)


async def test_bad_job_input(tmp_path: Path) -> None:
    tpl = tar_of(tmp_path, {"main.tf": ECHO_TF})
    with pytest.raises(terraform.JobInputError, match="bad variable name"):
        await run(tmp_path, job(tpl, variables={"a b": "x"}), "a")
    with pytest.raises(terraform.JobInputError, match="cannot be overridden"):
        await run(tmp_path, job(tpl, variables={"burrow_agent_token": "x"}), "b")
    with pytest.raises(terraform.JobInputError, match=r"no \.tf files"):
        await run(tmp_path, job(archive_without_tf(tmp_path)), "c")
    with pytest.raises(terraform.JobInputError, match="archive"):
        await run(tmp_path, job(b"garbage"), "d")


def test_env_drops_inherited_tf_vars_and_sets_burrow_vars(tmp_path: Path) -> None:
    j = job(b"", variables={"size": "big"})
    env = terraform.build_env(
        j,
        tmp_path,
        defaults={"burrow_binary": "/x/burrow", "size": "small"},
        base={"PATH": "/bin", "TF_VAR_leak": "1", "TF_LOG": "trace"},
    )
    assert env["TF_VAR_size"] == "big"
    assert env["TF_VAR_burrow_binary"] == "/x/burrow"
    assert env["TF_VAR_burrow_workspace_transition"] == "start"
    assert env["TF_VAR_burrow_agent_token"] == "tok-secret"
    assert env["CHECKPOINT_DISABLE"] == "1"
    assert env["TF_IN_AUTOMATION"] == "1"
    assert env["TF_CLI_CONFIG_FILE"] == str(tmp_path / ".burrow-terraformrc")
    assert "TF_VAR_leak" not in env
    assert "TF_LOG" not in env


def test_cli_config_mirror() -> None:
    assert "provider_installation" not in terraform.cli_config(None)
    text = terraform.cli_config(terraform.Mirror(filesystem="/opt/prov${x}", network="https://m/"))
    assert 'filesystem_mirror {\n    path = "/opt/prov$${x}"' in text
    assert 'url = "https://m/"' in text
    assert "direct" not in text


async def test_filesystem_mirror_is_used(tmp_path: Path) -> None:
    # A template needing a provider that is not in the (empty) mirror: init fails
    # quickly naming the mirror, instead of going to the network.
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    tpl = tar_of(
        tmp_path,
        {
            "main.tf": 'terraform {\n  required_providers {\n'
            '    null = { source = "hashicorp/null" }\n  }\n}\n'
        },
    )
    with pytest.raises(terraform.TerraformFailed) as info:
        await run(tmp_path, job(tpl), "w", mirror=terraform.Mirror(filesystem=str(mirror)))
    assert "hashicorp/null" in info.value.message


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def wait_gone(pid: int) -> None:
    with trio.fail_after(10):
        while pid_alive(pid):
            await trio.sleep(0.05)


def on_ready() -> tuple[trio.Event, list[str], Callable[[str, str], None]]:
    """An event set when the command logs ``ready-2``, the lines logged, and the on_log."""
    ready = trio.Event()
    logs: list[str] = []

    def on_log(_s: str, line: str) -> None:
        logs.append(line)
        if "ready-2" in line:
            ready.set()

    return ready, logs, on_log


def kill_leftover(pid_file: Path, pid: int | None, *, group: bool) -> None:
    """Kill the test's sleeper (its whole process group if ``group``) if it outlived the test."""
    if pid is None and pid_file.exists():
        pid = int(pid_file.read_text())
    if pid is not None and pid_alive(pid):
        if group:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("trap_int", [False, True])
async def test_cancel_interrupts_then_kills(tmp_path: Path, trap_int: bool) -> None:
    pid_file = tmp_path / "sleep.pid"
    # trap_int: the command ignores SIGINT, so only the SIGKILL after the grace ends it.
    body = "trap '' INT; " if trap_int else ""
    tpl = tar_of(
        tmp_path,
        {
            "main.tf": 'resource "terraform_data" "slow" {\n  provisioner "local-exec" {\n'
            f'    command = "{body}echo $$ > {pid_file}; echo ready-$((1+1)); sleep 60 & wait"\n'
            "  }\n}\n"
        },
    )
    cancel, logs, on_log = on_ready()

    sleeper: int | None = None
    try:
        with pytest.raises(terraform.TerraformCanceled), trio.fail_after(30):
            await terraform.run(
                job(tpl), workdir=tmp_path / "w", on_log=on_log, cancel=cancel, cancel_grace=1.0
            )
        sleeper = int(pid_file.read_text())
        assert any("interrupting terraform" in x for x in logs)
        # The shell running the command is gone (killed with terraform's group).
        await wait_gone(sleeper)
    finally:
        kill_leftover(pid_file, sleeper, group=True)


async def test_trio_cancellation_kills_terraform(tmp_path: Path) -> None:
    pid_file = tmp_path / "sleep.pid"
    tpl = tar_of(
        tmp_path,
        {
            "main.tf": 'resource "terraform_data" "slow" {\n  provisioner "local-exec" {\n'
            f'    command = "echo $$ > {pid_file}; echo ready-$((1+1)); sleep 60"\n'
            "  }\n}\n"
        },
    )
    started, _, on_log = on_ready()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def go() -> None:
                await terraform.run(job(tpl), workdir=tmp_path / "w", on_log=on_log)

            nursery.start_soon(go)
            await started.wait()
            nursery.cancel_scope.cancel()
    pid = int(pid_file.read_text())
    await wait_gone(pid)


async def test_cancel_kills_terraform_that_ignores_sigint(tmp_path: Path) -> None:
    # A stand-in terraform that ignores SIGINT: only the SIGKILL after the grace
    # period ends it, and its whole process group goes with it.
    fake = tmp_path / "fake-terraform"
    pid_file = tmp_path / "fake.pid"
    fake.write_text(
        "#!/bin/sh\ntrap '' INT\n"
        f'sleep 60 & echo $! > {pid_file}\necho ready-$((1+1))\nwait\n'
    )
    fake.chmod(0o755)
    tpl = tar_of(tmp_path, {"main.tf": ECHO_TF})
    cancel, logs, on_log = on_ready()

    sleeper: int | None = None
    try:
        with pytest.raises(terraform.TerraformCanceled), trio.fail_after(30):
            await terraform.run(
                job(tpl),
                workdir=tmp_path / "w",
                on_log=on_log,
                cancel=cancel,
                cancel_grace=0.5,
                terraform=str(fake),
            )
        sleeper = int(pid_file.read_text())
        assert any("killing it" in x for x in logs)
        await wait_gone(sleeper)
    finally:
        kill_leftover(pid_file, sleeper, group=False)
