"""Startup and shutdown script runner.

A script runs as ``sh -c SCRIPT`` in the workspace directory with the
manifest's environment, in its own process group, stdin from /dev/null and
stdout+stderr merged into one pipe.  Its output reaches a callback (the
agent sends it to coderd) as lines, in batches bounded in lines and bytes,
flushed at least every ``flush_interval`` so a slow script's log still flows.

Memory stays bounded: a slow callback applies backpressure (the pipe fills
and the script waits) rather than buffering without limit.  Past
``max_total_bytes`` the runner keeps draining the pipe but drops the rest,
saying so twice in the log itself: a marker line where the cut happens and
a final line with the number of bytes dropped.  Nothing is lost silently.

On timeout the process group gets SIGTERM, then SIGKILL after ``kill_grace``;
the result says ``timed_out`` (lifecycle: start_timeout / shutdown_timeout).
The group is recorded in :data:`agent.procgroups.tracked` while it has
members, so background processes a script leaves behind are ended when the
agent stops (or, if it is killed, by its supervisor or the template).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from agent import procgroups
from agent.environ import child_environ


@dataclass(frozen=True)
class LogLine:
    """One line of script output (no newline) and when it was read (Unix seconds)."""

    at: float
    text: str


@dataclass(frozen=True)
class OutputLimits:
    """Bounds on what a script's output may cost.

    Attributes:
        batch_lines: most lines per callback.
        batch_bytes: most bytes (of line text) per callback, roughly: a batch
            closes once it reaches this.
        flush_interval: longest a line waits for its batch to fill, seconds.
        max_line_bytes: longer lines are split into pieces of this size.
        max_total_bytes: output past this is dropped (with marker lines).
    """

    batch_lines: int = 100
    batch_bytes: int = 64 * 1024
    flush_interval: float = 0.25
    max_line_bytes: int = 16 * 1024
    max_total_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class ScriptResult:
    """How a script ended.

    Attributes:
        exit_code: the shell's exit status; negative N if killed by signal N;
            None if it could not be started.
        timed_out: it ran past its timeout and was killed.
        started_at: wall-clock start, Unix seconds.
        duration: how long it ran, seconds (monotonic).
        output_bytes: bytes of output read from it, dropped ones included.
        truncated: output went over ``max_total_bytes``.
    """

    exit_code: int | None
    timed_out: bool
    started_at: float
    duration: float
    output_bytes: int
    truncated: bool


OutputCallback = Callable[[Sequence[LogLine]], Awaitable[None]]


class LineSplitter:
    """Bytes in, lines out, with the total-size limit applied (sans-IO).

    ``feed`` returns the complete lines so far; ``finish`` returns the last
    partial line and, if output was dropped, the closing marker.
    """

    def __init__(self, max_line_bytes: int, max_total_bytes: int) -> None:
        if max_line_bytes < 1 or max_total_bytes < 0:
            raise ValueError("limits must be positive")
        self._max_line = max_line_bytes
        self._max_total = max_total_bytes
        self._partial = bytearray()
        self.kept_bytes = 0  # bytes passed on as lines (newlines included)
        self.dropped_bytes = 0  # bytes over the limit, discarded
        self.truncated = False

    def feed(self, data: bytes | bytearray) -> list[str]:
        out: list[str] = []
        self._partial += data
        start = 0
        buf = self._partial
        while True:
            nl = buf.find(b"\n", start, start + self._max_line + 1)
            if nl >= 0:
                self._emit(bytes(buf[start : nl + 1]), out)
                start = nl + 1
            elif len(buf) - start > self._max_line:
                self._emit(bytes(buf[start : start + self._max_line]), out)
                start += self._max_line
            else:
                break
        del buf[:start]
        return out

    def finish(self) -> list[str]:
        out: list[str] = []
        if self._partial:
            self._emit(bytes(self._partial), out)
            self._partial.clear()
        if self.truncated:
            out.append(
                f"[burrow] {self.dropped_bytes} bytes of output dropped "
                f"(limit {self._max_total} bytes)"
            )
        return out

    def _emit(self, raw: bytes, out: list[str]) -> None:
        if self.truncated or self.kept_bytes + len(raw) > self._max_total:
            if not self.truncated:
                self.truncated = True
                out.append(
                    f"[burrow] output over {self._max_total} bytes: the rest is dropped"
                )
            self.dropped_bytes += len(raw)
            return
        self.kept_bytes += len(raw)
        if raw.endswith(b"\n"):
            raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
        out.append(raw.decode("utf-8", errors="replace"))


async def _send_batches(
    lines: trio.MemoryReceiveChannel[LogLine], on_output: OutputCallback, limits: OutputLimits
) -> None:
    async with lines:
        while True:
            try:
                first = await lines.receive()
            except trio.EndOfChannel:
                return
            batch = [first]
            size = len(first.text)
            ended = False
            with trio.move_on_after(limits.flush_interval):
                while len(batch) < limits.batch_lines and size < limits.batch_bytes:
                    try:
                        line = await lines.receive()
                    except trio.EndOfChannel:
                        ended = True
                        break
                    batch.append(line)
                    size += len(line.text)
            await on_output(batch)
            if ended:
                return


@contextlib.contextmanager
def _single_error() -> Iterator[None]:
    """Re-raise a nursery's lone error as itself, as documented, not as a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from group
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def run_script(
    script: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float | None,
    on_output: OutputCallback,
    limits: OutputLimits | None = None,
    shell: str = "/bin/sh",
    kill_grace: float = 2.0,
    drain_timeout: float = 1.0,
    clock: Callable[[], float] = time.time,
) -> ScriptResult:
    """Run ``script`` to completion (or timeout), streaming its output.

    Args:
        script: shell text, run as ``shell -c script``.
        cwd: working directory.
        env: added to (and overriding) the agent's own environment (minus its
            secrets, see :mod:`agent.environ`).
        timeout: seconds before the script is killed; None or 0 for no limit.
        on_output: awaited with each batch of lines, in order.
        limits: output bounds (:class:`OutputLimits` defaults if None).
        shell: the interpreter.
        kill_grace: seconds between SIGTERM and SIGKILL on timeout.
        drain_timeout: after the script exits, how long to keep reading output
            that a background process may still hold open.
        clock: wall clock for timestamps.

    Returns:
        The :class:`ScriptResult`.  A script that cannot start (missing cwd or
        shell) is a result with ``exit_code=None`` and a log line saying why,
        not an exception.

    Raises:
        Whatever ``on_output`` raises; the script's process group is then
        killed before the error propagates.
    """
    limits = limits or OutputLimits()
    started_at = clock()
    t0 = trio.current_time()
    try:
        proc = await trio.lowlevel.open_process(
            [shell, "-c", script],
            cwd=cwd,
            env=child_environ(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        await on_output([LogLine(clock(), f"[burrow] cannot start script: {exc}")])
        return ScriptResult(None, False, started_at, 0.0, 0, False)
    procgroups.tracked.add(proc.pid)  # so what outlives the agent can end it
    assert proc.stdout is not None
    stdout = proc.stdout
    splitter = LineSplitter(limits.max_line_bytes, limits.max_total_bytes)
    send, receive = trio.open_memory_channel[LogLine](limits.batch_lines * 2)
    output_bytes = 0
    timed_out = False
    output_done = trio.Event()
    reader_scope = trio.CancelScope()

    async def read_output() -> None:
        nonlocal output_bytes
        with reader_scope:
            while chunk := await stdout.receive_some(65536):
                output_bytes += len(chunk)
                for text in splitter.feed(chunk):
                    await send.send(LogLine(clock(), text))
            output_done.set()

    try:
        with _single_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send_batches, receive, on_output, limits)
                async with send:
                    async with trio.open_nursery() as reading:
                        reading.start_soon(read_output)
                        with trio.move_on_after(timeout or math.inf) as waiting:
                            await proc.wait()
                        if waiting.cancelled_caught:
                            timed_out = True
                            _kill_group(proc.pid, signal.SIGTERM)
                            with trio.move_on_after(kill_grace):
                                await proc.wait()
                            _kill_group(proc.pid, signal.SIGKILL)
                            await proc.wait()
                        with trio.move_on_after(drain_timeout):
                            await output_done.wait()
                        reader_scope.cancel()
                    tail = splitter.finish()
                    if not output_done.is_set():
                        tail.append(
                            f"[burrow] stopped reading output {drain_timeout:g}s after the script "
                            "exited: a background process still holds it open"
                        )
                    for text in tail:
                        await send.send(LogLine(clock(), text))
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                _kill_group(proc.pid, signal.SIGKILL)
                await proc.wait()
            await stdout.aclose()
            procgroups.tracked.release(proc.pid)
    return ScriptResult(
        exit_code=proc.returncode,
        timed_out=timed_out,
        started_at=started_at,
        duration=trio.current_time() - t0,
        output_bytes=output_bytes,
        truncated=splitter.truncated,
    )
