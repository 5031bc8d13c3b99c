"""SSH sessions' child processes: PTY or pipes, and the trio pumps for their I/O.

One of the agent's SSH adapter modules (``agent/ssh_*.py``), the only modules
of the agent that touch asyncio (here through asyncssh's process hooks).

Theory of operation
-------------------
A session's child runs with a PTY when the client asks for one (window
changes follow), else with pipes.  Its I/O is pumped by trio tasks
(:class:`_ChildInput`, :func:`_pump_output`) plugged into asyncssh's process
reader and writer hooks, not by asyncssh's ``redirect``: its asyncio pipe
transports race with trio-asyncio's fd watchers when a pipe closes (EBADF,
lost output).  :func:`supervise` runs the pumps until the child exits and its
output is drained; if the channel goes first, the child's process group gets
SIGHUP, then SIGKILL after ``KILL_GRACE``.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import signal
import struct
import termios
from typing import cast

import asyncssh
import trio

from agent.ssh_transport import RECEIVE_SIZE, WRITE_HIGH_WATER, WRITE_LOW_WATER

# How long a PTY session keeps reading output after its shell exited
# (background jobs may hold the terminal open forever).
PTY_DRAIN_TIMEOUT = 1.0
# After SIGHUP to an abandoned session, how long before SIGKILL.
KILL_GRACE = 5.0
# Child stdout/stderr pipe capacity (Linux default 64 KiB; 1 MiB is the unprivileged max).
PIPE_SIZE = 1024 * 1024


def _set_controlling_tty() -> None:  # runs in the child between fork and exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_winsize(fd: int, size: tuple[int, int, int, int]) -> None:
    width, height, pixwidth, pixheight = size
    if width and height:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, pixwidth, pixheight))


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class _OutputGate:
    """asyncssh's reader protocol for one output of the child (stdout or stderr).

    asyncssh pauses it when the channel's window is full; the trio pump waits.
    """

    def __init__(self) -> None:
        self.open = trio.Event()  # set while the channel accepts data
        self.open.set()
        self.closed = False

    def pause_reading(self) -> None:
        if self.open.is_set():
            self.open = trio.Event()

    def resume_reading(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.closed = True
        self.open.set()

    def is_closed(self) -> bool:
        return self.closed


class _ChildInput:
    """asyncssh's writer protocol for the session's stdin, drained by a trio task.

    asyncssh calls ``write``/``write_eof``/``write_exception``/``close``
    synchronously from its callbacks; ``pump`` (a trio task) writes the queue
    to the child.  Window changes and signals arrive as ``write_exception``.
    """

    def __init__(self, process: asyncssh.SSHServerProcess[bytes], pid: int, tty: int | None):
        self._process = process
        self._pid = pid
        self._tty = tty
        self._queue: list[bytes] = []  # filled by write, drained by pump
        self._size = 0
        self._paused = False
        self._eof = False
        self._wake = trio.Event()
        self.channel_gone = trio.Event()  # close(): the channel ended

    def write(self, data: bytes) -> None:
        self._queue.append(data)
        self._size += len(data)
        self._wake.set()
        if self._size > WRITE_HIGH_WATER and not self._paused:
            self._paused = True
            self._process.pause_feeding(None)

    def write_eof(self) -> None:
        self._eof = True
        self._wake.set()

    def write_exception(self, exc: Exception) -> None:
        if isinstance(exc, asyncssh.TerminalSizeChanged):
            if self._tty is not None:
                _set_winsize(self._tty, exc.term_size)
        elif isinstance(exc, asyncssh.SignalReceived):
            sig = getattr(signal, f"SIG{exc.signal}", None)
            if isinstance(sig, signal.Signals):
                _kill_group(self._pid, sig)
        elif isinstance(exc, asyncssh.BreakReceived):
            _kill_group(self._pid, signal.SIGINT)

    def close(self) -> None:
        self.channel_gone.set()
        self._wake.set()

    def _resume(self) -> None:
        if self._paused and self._size <= WRITE_LOW_WATER:
            self._paused = False
            self._process.resume_feeding(None)

    async def pump(self, sink: trio.abc.SendStream, close_on_eof: bool) -> None:
        """Write queued input to ``sink`` until EOF (then close it) or the channel ends."""
        broken = False
        while not self.channel_gone.is_set():
            await self._wake.wait()
            self._wake = trio.Event()
            while self._queue:
                chunk = b"".join(self._queue)
                self._queue.clear()
                self._size = 0
                self._resume()
                if not broken:
                    try:
                        await sink.send_all(chunk)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        broken = True  # the child closed its stdin; discard the rest
            if self._eof:
                if close_on_eof:
                    await sink.aclose()
                return


async def _pump_output(
    process: asyncssh.SSHServerProcess[bytes],
    source: trio.abc.ReceiveStream,
    datatype: int | None,
) -> None:
    """Copy one child output to the channel, honouring the channel's flow control."""
    gate = _OutputGate()
    process.set_reader(gate, False, datatype)
    try:
        while not gate.closed:
            await gate.open.wait()
            if gate.is_closed():
                break
            try:
                data = await source.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""  # a PTY master reads EIO once the terminal is hung up
            if not data:
                break
            process.channel.write(cast(bytes, data), datatype)
    finally:
        if not gate.closed:
            gate.closed = True
            process.clear_reader(datatype)


def _grow_pipe(stream: trio.abc.AsyncResource | None) -> None:
    # Bigger pipes mean bigger reads and fewer trips through the loop.
    fileno = getattr(stream, "fileno", None)
    if fileno is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)


async def supervise(
    process: asyncssh.SSHServerProcess[bytes], child: trio.Process, tty: int | None
) -> int | None:
    """Pump the child's I/O until it exits and its output is drained.

    Returns its status (negative: killed by that signal), or None when the
    channel closed first (the child's process group then gets SIGHUP, and
    SIGKILL after KILL_GRACE).
    """
    stdin = _ChildInput(process, child.pid, tty)
    sink: trio.abc.SendStream
    outputs: list[tuple[trio.abc.ReceiveStream, int | None]]
    if tty is not None:
        term = trio.lowlevel.FdStream(tty)  # owns and closes the master fd
        sink, outputs = term, [(term, None)]
        drain_timeout, close_on_eof = PTY_DRAIN_TIMEOUT, False
    else:
        assert child.stdin is not None
        assert child.stdout is not None
        assert child.stderr is not None
        for stream in (child.stdout, child.stderr):
            _grow_pipe(stream)
        sink = child.stdin
        outputs = [(child.stdout, None), (child.stderr, asyncssh.EXTENDED_DATA_STDERR)]
        drain_timeout, close_on_eof = math.inf, True
    drained = trio.Event()

    async def pump_outputs() -> None:
        async with trio.open_nursery() as inner:
            for source, datatype in outputs:
                inner.start_soon(_pump_output, process, source, datatype)
        drained.set()

    async def hang_up_when_gone() -> None:
        await stdin.channel_gone.wait()
        _kill_group(child.pid, signal.SIGHUP)
        await trio.sleep(KILL_GRACE)
        _kill_group(child.pid, signal.SIGKILL)

    try:
        process.set_writer(stdin, True, None)
        process.feed_recv_buf(None, stdin)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stdin.pump, sink, close_on_eof)
            nursery.start_soon(pump_outputs)
            nursery.start_soon(hang_up_when_gone)
            status = await child.wait()
            if not stdin.channel_gone.is_set():
                with trio.move_on_after(drain_timeout):
                    await drained.wait()
            nursery.cancel_scope.cancel()
        if stdin.channel_gone.is_set():
            return None
        process.channel.write_eof()
        return status
    finally:
        with trio.CancelScope(shield=True):
            if child.returncode is None:
                _kill_group(child.pid, signal.SIGHUP)
                with trio.move_on_after(KILL_GRACE):
                    await child.wait()
                if child.returncode is None:
                    _kill_group(child.pid, signal.SIGKILL)
                    await child.wait()
            await sink.aclose()
            for source, _ in outputs:
                await source.aclose()
