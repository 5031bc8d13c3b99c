"""Run Terraform for one provisioner job, for real, in a per-job work dir.

Theory of operation.  A job is one workspace transition (start, stop,
delete).  :func:`run` builds a fresh work dir: the template archive unpacked
safely (``provisionerd.archive``), the workspace's prior state restored as
``terraform.tfstate``, and a generated CLI config (``TF_CLI_CONFIG_FILE``) so
no user or host ``~/.terraformrc`` leaks in and providers come only from a
configured filesystem or network mirror.  It then runs, each step only if the
previous one succeeded::

    start/stop:  init -> plan -out=tfplan -> show -json tfplan -> apply tfplan
    delete:      init -> destroy -auto-approve
    then:        show -json  (resources and agents after the build)

Every line terraform prints on stdout or stderr goes to the ``on_log``
callback as it comes.  Values reach the template as ``TF_VAR_burrow_*``
environment variables; user variables as ``TF_VAR_<name>``.

Cancellation.  When the ``cancel`` event is set, terraform gets SIGINT (it
stops provisioners and writes its state), and if it has not exited after
``cancel_grace`` seconds its whole process group gets SIGKILL.  Terraform runs
in its own session so the group holds exactly terraform and what it spawned
(providers, ``local-exec`` commands); a workspace process that must outlive
terraform detaches itself with ``setsid``.  If the calling task is cancelled
by trio, the group is killed at once.

Errors are typed (:class:`TerraformError` and subclasses) and carry
terraform's own message, so the build fails with it in the logs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import trio

from provisionerd import archive
from provisionerd.resources import (
    Agent,
    Resource,
    ResourceError,
    ephemeral_addresses,
    parse_state,
)

Transition = Literal["start", "stop", "delete"]
TRANSITIONS: tuple[Transition, ...] = ("start", "stop", "delete")

LogSink = Callable[[str, str], None]
"""``on_log(stream, line)``; stream is ``"stdout"``, ``"stderr"`` or ``"provisioner"``."""

MAX_LINE = 16 * 1024
"""Longer output lines are split into pieces of this many characters."""

STATE_FILE = "terraform.tfstate"
CLI_CONFIG_FILE = ".burrow-terraformrc"
PLAN_FILE = "tfplan"

_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
RESERVED_VARS = (
    "burrow_workspace_name",
    "burrow_workspace_owner",
    "burrow_workspace_transition",
    "burrow_agent_token",
    "burrow_access_url",
)


class TerraformError(Exception):
    """Base of every error a terraform run raises.

    Attributes:
        state: the state terraform left behind, if any (a failed apply may
            still have created resources; coderd should keep it).
    """

    def __init__(self, message: str, *, state: bytes | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.state = state


class TerraformNotFound(TerraformError):
    """The ``terraform`` executable does not exist or cannot be run."""


class TerraformFailed(TerraformError):
    """A terraform command exited non-zero; the message is terraform's own."""


class TerraformCanceled(TerraformError):
    """The job was cancelled and terraform was interrupted (or killed)."""


class JobInputError(TerraformError):
    """The job itself is unusable: bad archive, bad variable name, bad transition."""


@dataclass(frozen=True)
class Mirror:
    """Where providers come from in an air-gapped install (both optional)."""

    filesystem: str | None = None
    network: str | None = None


@dataclass(frozen=True)
class TerraformJob:
    """Everything one run needs, as coderd sent it."""

    template: bytes
    transition: Transition
    workspace_name: str
    workspace_owner: str
    agent_token: str
    access_url: str
    state: bytes | None = None
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    """The outcome of a successful run."""

    state: bytes
    resources: list[Resource]
    agents: list[Agent]


def _hcl_string(value: str) -> str:
    # A JSON string is a valid HCL string once ``${`` / ``%{`` cannot start a template.
    return json.dumps(value).replace("${", "$${").replace("%{", "%%{")


def cli_config(mirror: Mirror | None) -> str:
    """The CLI config text: no checkpoint, providers only from the mirror if set."""
    lines = ["disable_checkpoint = true"]
    if mirror and (mirror.filesystem or mirror.network):
        lines.append("provider_installation {")
        if mirror.filesystem:
            path = _hcl_string(mirror.filesystem)
            lines.append(f"  filesystem_mirror {{\n    path = {path}\n  }}")
        if mirror.network:
            lines.append(f"  network_mirror {{\n    url = {_hcl_string(mirror.network)}\n  }}")
        lines.append("}")
    return "\n".join(lines) + "\n"


def build_env(
    job: TerraformJob,
    workdir: Path,
    *,
    defaults: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment terraform runs with.

    Args:
        job: the job.
        workdir: the job's work dir (holds the CLI config).
        defaults: variables the daemon supplies unless the user sets them
            (e.g. ``burrow_binary``).
        base: the inherited environment (``os.environ`` by default);
            inherited ``TF_*`` variables are dropped.

    Raises:
        JobInputError: a user variable name is not an identifier or is reserved.
    """
    inherited = os.environ if base is None else base
    env = {k: v for k, v in inherited.items() if not k.startswith("TF_")}
    env.update(
        CHECKPOINT_DISABLE="1",
        TF_IN_AUTOMATION="1",
        TF_INPUT="0",
        TF_CLI_CONFIG_FILE=str(workdir / CLI_CONFIG_FILE),
    )
    for name, value in (defaults or {}).items():
        env[f"TF_VAR_{name}"] = value
    for name, value in job.variables.items():
        if not _VAR_NAME.match(name):
            raise JobInputError(f"bad variable name {name!r}")
        if name in RESERVED_VARS:
            raise JobInputError(f"variable {name!r} is set by burrow and cannot be overridden")
        env[f"TF_VAR_{name}"] = value
    env.update(
        TF_VAR_burrow_workspace_name=job.workspace_name,
        TF_VAR_burrow_workspace_owner=job.workspace_owner,
        TF_VAR_burrow_workspace_transition=job.transition,
        TF_VAR_burrow_agent_token=job.agent_token,
        TF_VAR_burrow_access_url=job.access_url,
    )
    return env


def prepare(job: TerraformJob, workdir: Path, mirror: Mirror | None = None) -> None:
    """Unpack the template, restore the state and write the CLI config.

    Raises:
        JobInputError: bad transition or template archive.
    """
    if job.transition not in TRANSITIONS:
        raise JobInputError(f"bad transition {job.transition!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        files = archive.extract(job.template, workdir)
    except archive.ArchiveError as exc:
        raise JobInputError(str(exc)) from exc
    if not any(f.endswith((".tf", ".tf.json")) for f in files):
        raise JobInputError("template archive has no .tf files")
    if job.state:
        (workdir / STATE_FILE).write_bytes(job.state)
    (workdir / CLI_CONFIG_FILE).write_text(cli_config(mirror))


class _Lines:
    """Splits a byte stream into text lines for the log sink."""

    def __init__(
        self, stream: str, sink: LogSink, tail: list[str], capture: list[bytes] | None = None
    ) -> None:
        self.stream = stream
        self.sink = sink
        self.tail = tail
        self.capture = capture
        self.buf = b""

    def feed(self, data: bytes) -> None:
        if self.capture is not None:
            # Captured output (JSON) is kept whole and not logged line by line.
            self.capture.append(data)
            return
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            self._emit(line)
        while len(self.buf) > MAX_LINE * 4:
            self._emit(self.buf[: MAX_LINE * 4])
            self.buf = self.buf[MAX_LINE * 4 :]

    def close(self) -> None:
        if self.buf:
            self._emit(self.buf)
            self.buf = b""

    def _emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        for i in range(0, max(len(text), 1), MAX_LINE):
            piece = text[i : i + MAX_LINE]
            self.sink(self.stream, piece)
            if self.stream == "stderr":
                self.tail.append(piece)
                del self.tail[:-40]


# How long to keep reading terraform's pipes after it exited (see Runner.__call__).
DRAIN_TIMEOUT = 5.0


async def _pump(stream: trio.abc.ReceiveStream, lines: _Lines) -> None:
    async with stream:
        while data := await stream.receive_some(65536):
            lines.feed(bytes(data))
    lines.close()


def _killpg(proc: trio.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _error_message(tail: list[str], args: list[str], code: int) -> str:
    # Terraform's diagnostics start at a line "Error: ..." (boxed with "│ " when not -no-color).
    text = [line.removeprefix("│ ").removeprefix("╷").removeprefix("╵") for line in tail]
    for i, line in enumerate(text):
        if line.lstrip().startswith("Error:"):
            msg = "\n".join(x for x in text[i:] if x.strip())
            return msg
    body = "\n".join(x for x in text if x.strip())
    return body or f"terraform {args[0]} exited with status {code}"


class Runner:
    """Runs terraform commands in one work dir, streaming output, obeying cancel."""

    def __init__(
        self,
        terraform: str,
        workdir: Path,
        env: Mapping[str, str],
        on_log: LogSink,
        cancel: trio.Event,
        cancel_grace: float,
    ) -> None:
        self.terraform = terraform
        self.workdir = workdir
        self.env = dict(env)
        self.on_log = on_log
        self.cancel = cancel
        self.cancel_grace = cancel_grace

    async def __call__(self, *args: str, capture: bool = False, echo: bool = True) -> bytes:
        """Run ``terraform args...``; return stdout if ``capture``.

        Raises:
            TerraformNotFound, TerraformFailed, TerraformCanceled.
        """
        if self.cancel.is_set():
            raise TerraformCanceled("canceled before terraform " + args[0])
        if echo:
            self.on_log("provisioner", "$ terraform " + " ".join(args))
        try:
            proc = await trio.lowlevel.open_process(
                [self.terraform, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=str(self.workdir),
                env=self.env,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise TerraformNotFound(f"cannot run terraform ({self.terraform!r}): {exc}") from exc
        tail: list[str] = []
        captured: list[bytes] = []
        out_lines = _Lines("stdout", self.on_log, tail, captured if capture else None)
        err_lines = _Lines("stderr", self.on_log, tail)
        interrupted = False
        try:
            async with trio.open_nursery() as nursery:
                assert proc.stdout is not None
                assert proc.stderr is not None
                drained = trio.Event()
                open_pipes = [2]

                async def pump(stream: trio.abc.ReceiveStream, lines: _Lines) -> None:
                    try:
                        await _pump(stream, lines)
                    finally:
                        open_pipes[0] -= 1
                        if not open_pipes[0]:
                            drained.set()

                nursery.start_soon(pump, proc.stdout, out_lines)
                nursery.start_soon(pump, proc.stderr, err_lines)

                async def watch_cancel() -> None:
                    nonlocal interrupted
                    await self.cancel.wait()
                    interrupted = True
                    self.on_log("provisioner", "cancel requested: interrupting terraform")
                    try:
                        proc.send_signal(signal.SIGINT)
                    except ProcessLookupError:
                        return
                    with trio.move_on_after(self.cancel_grace):
                        await proc.wait()
                        return
                    self.on_log("provisioner", "terraform did not stop in time: killing it")
                    _killpg(proc)

                nursery.start_soon(watch_cancel)
                await proc.wait()
                # Terraform has exited, but its last output (all of `show -json`, say) may
                # still sit in the pipes: read them to the end. A background child that
                # inherited a pipe could hold it open forever, hence the bound.
                with trio.move_on_after(DRAIN_TIMEOUT):
                    await drained.wait()
                nursery.cancel_scope.cancel()
        finally:
            if proc.returncode is None or interrupted:
                # Also after an interrupted run: strays left in terraform's group go.
                _killpg(proc)
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await proc.wait()
        code = proc.returncode if proc.returncode is not None else -1
        if interrupted:
            raise TerraformCanceled(f"terraform {args[0]} canceled (exit status {code})")
        if code != 0:
            raise TerraformFailed(_error_message(tail, list(args), code))
        return b"".join(captured)


def _read_state(workdir: Path) -> bytes | None:
    path = workdir / STATE_FILE
    return path.read_bytes() if path.exists() else None


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise TerraformFailed(f"terraform {what} printed invalid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise TerraformFailed(f"terraform {what} printed JSON that is not an object")
    return value


async def run(
    job: TerraformJob,
    *,
    workdir: Path,
    on_log: LogSink,
    terraform: str = "terraform",
    cancel: trio.Event | None = None,
    cancel_grace: float = 10.0,
    mirror: Mirror | None = None,
    defaults: Mapping[str, str] | None = None,
) -> RunResult:
    """Run one job's terraform commands in ``workdir`` (created, left in place).

    Args:
        job: template, prior state, transition and values.
        workdir: a directory that does not exist yet or is empty.
        on_log: called with each output line as it comes.
        terraform: the executable (name on PATH or a path).
        cancel: set it to interrupt the run.
        cancel_grace: seconds between SIGINT and SIGKILL on cancel.
        mirror: provider mirror for air-gapped installs.
        defaults: template variables the daemon supplies unless the user
            sets them (e.g. ``{"burrow_binary": "/usr/bin/burrow"}``).

    Returns:
        The new state and the resources and agents found in it.

    Raises:
        JobInputError: bad template archive, variable name or transition.
        TerraformNotFound: the terraform executable cannot be run.
        TerraformFailed: a command failed; the message is terraform's.
        TerraformCanceled: ``cancel`` was set.
    """
    await trio.to_thread.run_sync(prepare, job, workdir, mirror)
    env = build_env(job, workdir, defaults=defaults)
    tf = Runner(
        terraform,
        workdir,
        env,
        on_log,
        cancel if cancel is not None else trio.Event(),
        cancel_grace if math.isfinite(cancel_grace) else 10.0,
    )
    if shutil.which(terraform, path=env.get("PATH")) is None:
        raise TerraformNotFound(f"terraform executable {terraform!r} not found")
    try:
        await tf("init", "-input=false", "-no-color")
        ephemeral: set[str] = set()
        if job.transition == "delete":
            await tf("destroy", "-auto-approve", "-input=false", "-no-color")
        else:
            await tf("plan", "-input=false", "-no-color", f"-out={PLAN_FILE}")
            plan = _json(await tf("show", "-json", PLAN_FILE, capture=True, echo=False), "show")
            ephemeral = ephemeral_addresses(plan)
            await tf("apply", "-input=false", "-no-color", "-auto-approve", PLAN_FILE)
        shown = _json(await tf("show", "-json", capture=True, echo=False), "show")
        resources, agents = parse_state(shown, ephemeral)
    except ResourceError as exc:
        raise TerraformFailed(str(exc), state=_read_state(workdir)) from exc
    except TerraformError as exc:
        exc.state = _read_state(workdir)
        raise
    state = _read_state(workdir) or b""
    return RunResult(state=state, resources=resources, agents=agents)
