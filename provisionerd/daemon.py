"""The provisioner daemon: takes jobs from coderd over a WebSocket and runs terraform.

Theory of operation.  :meth:`ProvisionerDaemon.run` loops forever over
*sessions*.  A session is one WebSocket connection (from the ``connect``
callable): ``hello`` -> ``welcome``, then one job at a time: ``acquire``
(coderd answers when a job matching our tags exists), run it, ``complete``,
wait for ``completed``.  Built-in daemons (inside ``burrow server``) and
external ones (``burrow provisionerd start``) run this same code; only
``connect`` differs.

While a job runs, three tasks share the connection:

* the *reader* (whole session) owns ``get_message``: a ``heartbeat_ack``
  with ``cancel`` sets the running job's cancel event, anything else goes
  to the session's inbox channel;
* the *flusher* sends buffered log lines every ``log_flush_interval``
  (batches of at most ``protocol.MAX_LOG_LINES``);
* the *heartbeater* sends ``heartbeat`` every ``heartbeat_interval``.

Sends are serialised by one lock.  The log buffer is bounded: when
terraform prints faster than we can send, the oldest lines are dropped and
a line saying how many is sent in their place.

If the connection breaks, the session ends: a running terraform is killed
(its state cannot be reported any more; coderd fails the job when its
heartbeats stop) and the daemon reconnects with exponential backoff.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import sys
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

import trio

from provisionerd import protocol
from provisionerd import terraform as tf

log = logging.getLogger("burrow.provisionerd")

M = TypeVar("M", bound=protocol.Message)


class WebSocketLike(Protocol):
    """The part of ``trio_websocket.WebSocketConnection`` the daemon uses."""

    async def send_message(self, message: str | bytes) -> None: ...

    async def get_message(self) -> str | bytes: ...

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


Connect = Callable[[], Awaitable[WebSocketLike]]


class Unauthorized(Exception):
    """coderd refused the daemon's pre-shared key; retrying will not help.

    ``connect`` raises it for a ``401`` answer to the upgrade; the daemon
    raises it for an ``error`` message after ``hello``.
    """


class SessionError(Exception):
    """coderd broke the conversation (unexpected message or ``error``)."""


def default_burrow_binary() -> str:
    """The ``burrow`` executable beside the running Python, else ``burrow`` on PATH."""
    beside = Path(sys.executable).parent / "burrow"
    return str(beside) if beside.exists() else (shutil.which("burrow") or "burrow")


class LogBuffer:
    """Bounded FIFO of log lines; counts lines dropped when full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: deque[protocol.LogLine] = deque()
        self.dropped = 0

    def add(self, stream: str, line: str) -> None:
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if len(self.lines) >= self.limit:
            self.lines.popleft()
            self.dropped += 1
        self.lines.append(protocol.LogLine(stream, line[: protocol.MAX_LOG_LINE], ts))

    def take(
        self, n: int = protocol.MAX_LOG_LINES, size: int = protocol.MAX_LOG_BATCH
    ) -> tuple[protocol.LogLine, ...]:
        """Up to ``n`` lines of at most ``size`` characters in all (at least one line)."""
        out: list[protocol.LogLine] = []
        if self.dropped:
            note = f"[{self.dropped} log lines dropped: output too fast]"
            out.append(protocol.LogLine("provisioner", note))
            self.dropped = 0
        total = 0
        while self.lines and len(out) < n:
            cost = len(self.lines[0].line) + 64
            if out and total + cost > size:
                break
            total += cost
            out.append(self.lines.popleft())
        return tuple(out)

    def __len__(self) -> int:
        return len(self.lines) + (1 if self.dropped else 0)


class _Session:
    """One connection: the send lock, the reader's inbox, the running job's cancel event."""

    def __init__(self, ws: WebSocketLike) -> None:
        self.ws = ws
        self.send_lock = trio.Lock()  # taken by every task that sends
        self.inbox_send, self.inbox = trio.open_memory_channel[protocol.Message](16)
        self.job_id: str | None = None  # set by the job runner, read by the reader
        self.cancel: trio.Event | None = None  # same

    async def send(self, msg: protocol.Message) -> None:
        text = protocol.encode(msg)
        async with self.send_lock:
            await self.ws.send_message(text)

    async def reader(self) -> None:
        # close() is synchronous: an async close would checkpoint, and the
        # cancellation it lets in would replace the error being raised.
        try:
            while True:
                msg = protocol.decode(await self.ws.get_message())
                if isinstance(msg, protocol.HeartbeatAck):
                    if msg.cancel and msg.job_id == self.job_id and self.cancel is not None:
                        self.cancel.set()
                    continue
                if isinstance(msg, protocol.Error):
                    if "unauthorized" in msg.message.lower():
                        raise Unauthorized(msg.message)
                    raise SessionError(f"coderd: {msg.message}")
                await self.inbox_send.send(msg)
        finally:
            self.inbox_send.close()

    async def expect(self, kind: type[M]) -> M:
        try:
            msg = await self.inbox.receive()
        except trio.EndOfChannel:
            raise SessionError("connection closed") from None
        if not isinstance(msg, kind):
            raise SessionError(f"expected {kind.TYPE}, got {msg.TYPE}")
        return msg


class ProvisionerDaemon:
    """Runs provisioner jobs for coderd until cancelled.

    Args:
        connect: opens a WebSocket to coderd's ``/api/v2/provisionerd``
            (subprotocol and PSK header are its business).
        name: shown in coderd's list of daemons.
        tags: matched against job tags by coderd.
        workdir_root: per-job work dirs are created (and removed) under it.
        terraform: the terraform executable.
        psk: also sent in ``hello`` (for ``connect`` callables that cannot set headers).
        heartbeat_interval: seconds between heartbeats while a job runs.
        log_flush_interval: seconds between log batches.
        log_buffer_lines: bound on buffered lines (oldest dropped beyond it).
        cancel_grace: seconds between SIGINT and SIGKILL on cancel.
        mirror: provider mirror for air-gapped installs.
        variables: template variable defaults (``burrow_binary`` is added
            unless given).
        keep_workdirs: leave work dirs in place (debugging).
        backoff: (first, max) reconnect delays in seconds.
    """

    def __init__(
        self,
        connect: Connect,
        *,
        name: str,
        tags: Mapping[str, str],
        workdir_root: Path,
        terraform: str = "terraform",
        psk: str | None = None,
        daemon_id: str | None = None,
        heartbeat_interval: float = 3.0,
        log_flush_interval: float = 0.25,
        log_buffer_lines: int = 10_000,
        cancel_grace: float = 10.0,
        mirror: tf.Mirror | None = None,
        variables: Mapping[str, str] | None = None,
        keep_workdirs: bool = False,
        backoff: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        self.connect = connect
        self.name = name
        self.tags = dict(tags)
        self.workdir_root = workdir_root
        self.terraform = terraform
        self.psk = psk
        self.daemon_id = daemon_id or str(uuid.uuid4())
        self.heartbeat_interval = heartbeat_interval
        self.log_flush_interval = log_flush_interval
        self.log_buffer_lines = log_buffer_lines
        self.cancel_grace = cancel_grace
        self.mirror = mirror
        self.variables = {"burrow_binary": default_burrow_binary(), **(variables or {})}
        self.keep_workdirs = keep_workdirs
        self.backoff = backoff
        self.jobs_completed = 0  # counters, read by tests and metrics
        self.sessions = 0
        self.connected = trio.Event()  # set after each welcome; replaced on disconnect

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve jobs forever, reconnecting with backoff.

        ``task_status.started()`` is called after the first ``welcome``.

        Raises:
            Unauthorized: coderd refused the pre-shared key.
        """
        delay = self.backoff[0]
        started = False
        while True:
            try:
                ws = await self.connect()
            except Unauthorized:
                raise
            except Exception as exc:  # any failure to connect is retried
                log.warning("provisioner %s: connect failed: %s", self.name, exc)
            else:
                try:

                    def welcomed() -> None:
                        nonlocal delay, started
                        delay = self.backoff[0]
                        if not started:
                            started = True
                            task_status.started()

                    await self._session(ws, welcomed)
                except Unauthorized:
                    raise
                except Exception as exc:  # a broken session is retried
                    log.warning("provisioner %s: session ended: %s", self.name, exc)
                finally:
                    self.connected = trio.Event()
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await _quiet_close(ws)
            await trio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, self.backoff[1])

    async def _session(self, ws: WebSocketLike, welcomed: Callable[[], None]) -> None:
        try:
            await self._serve(ws, welcomed)
        except BaseExceptionGroup as group:
            raise _unwrap(group) from None

    async def _serve(self, ws: WebSocketLike, welcomed: Callable[[], None]) -> None:
        s = _Session(ws)
        self.sessions += 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.reader)
            await s.send(protocol.Hello(self.daemon_id, self.name, self.tags, self.psk))
            await s.expect(protocol.Welcome)
            self.connected.set()
            log.info("provisioner %s connected (tags %s)", self.name, self.tags)
            welcomed()
            while True:
                await s.send(protocol.Acquire())
                job = await s.expect(protocol.Job)
                await self._run_job(s, job)

    async def _run_job(self, s: _Session, job: protocol.Job) -> None:
        logs = LogBuffer(self.log_buffer_lines)
        cancel = trio.Event()
        s.job_id, s.cancel = job.id, cancel
        log.info("provisioner %s: job %s (%s) started", self.name, job.id, job.kind)
        result: dict[str, object] | None = None
        error: str | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._flusher, s, job.id, logs)
                nursery.start_soon(self._heartbeater, s, job.id)
                result, error = await self._execute(job, logs, cancel)
                nursery.cancel_scope.cancel()
            while len(logs):
                await s.send(protocol.Log(job.id, logs.take()))
            result, pieces = protocol.split_state(result)
            for piece in pieces:
                await s.send(protocol.StateChunk(job.id, piece))
            await s.send(protocol.Complete(job.id, result=result, error=error))
            done = await s.expect(protocol.Completed)
            if done.job_id != job.id:
                raise SessionError(f"completed for {done.job_id}, expected {job.id}")
        finally:
            s.job_id, s.cancel = None, None
        self.jobs_completed += 1
        log.info("provisioner %s: job %s %s", self.name, job.id, "failed" if error else "succeeded")

    async def _execute(
        self, job: protocol.Job, logs: LogBuffer, cancel: trio.Event
    ) -> tuple[dict[str, object] | None, str | None]:
        if job.kind != protocol.JOB_KIND_BUILD:
            logs.add("provisioner", f"unknown job kind {job.kind!r}")
            return None, f"unknown job kind {job.kind!r}"
        try:
            build = protocol.BuildInput.from_json(job.input)
        except protocol.ProtocolError as exc:
            logs.add("provisioner", f"bad job input: {exc}")
            return None, f"bad job input: {exc}"
        tf_job = tf.TerraformJob(
            template=build.template,
            transition=build.transition,
            workspace_name=build.workspace_name,
            workspace_owner=build.workspace_owner,
            agent_token=build.agent_token,
            access_url=build.access_url,
            state=build.state,
            variables=build.variables,
        )
        workdir = self.workdir_root / f"job-{_safe(job.id)}-{uuid.uuid4().hex[:8]}"
        try:
            res = await tf.run(
                tf_job,
                workdir=workdir,
                on_log=logs.add,
                terraform=self.terraform,
                cancel=cancel,
                cancel_grace=self.cancel_grace,
                mirror=self.mirror,
                defaults=self.variables,
            )
        except tf.TerraformError as exc:
            logs.add("provisioner", f"{type(exc).__name__}: {exc.message}")
            partial = protocol.BuildResult(exc.state).to_json() if exc.state else None
            error = "canceled" if isinstance(exc, tf.TerraformCanceled) else exc.message
            return partial, error[: protocol.MAX_ERROR]
        finally:
            if not self.keep_workdirs:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(
                        lambda: shutil.rmtree(workdir, ignore_errors=True)
                    )
        out = protocol.BuildResult(
            res.state, [r.to_json() for r in res.resources], [a.to_json() for a in res.agents]
        )
        return out.to_json(), None

    async def _flusher(self, s: _Session, job_id: str, logs: LogBuffer) -> None:
        while True:
            await trio.sleep(self.log_flush_interval)
            while len(logs):
                await s.send(protocol.Log(job_id, logs.take()))

    async def _heartbeater(self, s: _Session, job_id: str) -> None:
        interval = self.heartbeat_interval if math.isfinite(self.heartbeat_interval) else 3.0
        while True:
            await s.send(protocol.Heartbeat(job_id))
            await trio.sleep(interval)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error that ended a session, so callers can ``except Unauthorized``.

    A group holding ``trio.Cancelled`` is returned as it is: trio must see it.
    """
    cancelled, rest = group.split(trio.Cancelled)
    if cancelled is not None or rest is None:
        return group
    leaves = _leaves(rest)
    for leaf in leaves:
        if isinstance(leaf, Unauthorized):
            return leaf
    return leaves[0] if leaves else group


def _safe(job_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in job_id)[:64]


async def _quiet_close(ws: WebSocketLike) -> None:
    try:
        await ws.aclose()
    except Exception as exc:  # closing a broken connection may fail; nothing to do
        log.debug("close failed: %s", exc)
