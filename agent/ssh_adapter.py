"""The agent's SSH server: asyncssh under trio, fed by any ``trio.abc.Stream``.

This is the one module of the agent that touches asyncio.  asyncssh is an
asyncio library; it runs here on a trio-asyncio loop (:func:`asyncio_loop`,
opened once per process and reused), so the rest of the agent stays trio.

Theory of operation
-------------------
SSH connections reach the agent as tunnel streams, not sockets.  asyncssh
normally owns a socket through an asyncio transport; here
:class:`_StreamTransport` *is* the asyncio transport, and two trio tasks pump
it against the trio stream:

* ``_pump_in`` awaits ``stream.receive_some`` and hands each chunk straight
  to the SSH protocol's ``data_received`` (same thread, no copy, no extra
  syscall).  ``pause_reading`` parks it.
* ``transport.write`` (called by asyncssh) appends to a list and wakes
  ``_pump_out``, which joins everything queued into one ``send_all`` --
  big writes for bulk data, no waiting for keystrokes.

The transport is handed to asyncssh through the documented ``tunnel=``
option of :func:`asyncssh.run_server` (an object with ``create_connection``),
so asyncssh's own connection code does the rest.  The alternative, a
socketpair bridge (two trio copy loops into asyncssh's socket transport),
costs a kernel round trip and two copies per chunk; ``python -m
bench ssh`` measures both against asyncssh's plain socket transport and
sshd.  On the shared 2-core test machine the three asyncssh paths were within
run-to-run noise of each other, so the bridge-free design was kept.

Security: the server accepts every user with no authentication ("none").
Authentication happens at the tunnel: only peers the coordinator authorised
can open a stream to the ``ssh`` service, and :meth:`SSHServer.serve_tcp`
exists for tests and benchmarks on loopback only.

Sessions run the user's login shell (or ``shell``): with a PTY when the
client asks for one (window changes follow), else with pipes; the exit status
(or signal) goes back to the client.  The child's I/O is pumped by trio tasks
(``_ChildInput``, ``_pump_output``) plugged into asyncssh's process reader and
writer hooks, not by asyncssh's ``redirect``: its asyncio pipe transports race
with trio-asyncio's fd watchers when a pipe closes (EBADF, lost output).

SFTP is asyncssh's server with relative paths resolved in the workspace
directory; like sshd it ends with exit status 0 (scp counts on it).  Local
(-L) and remote (-R) TCP forwarding and agent forwarding (-A) are allowed.
A ``login_gate`` holds shell and exec sessions until startup is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import pty
import pwd
import signal
import socket
import struct
import subprocess
import termios
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, cast

import asyncssh
import trio
import trio_asyncio

from agent.environ import child_environ
from agent.stats import ConnStats

log = logging.getLogger("burrow.agent.ssh")

# One receive_some worth of bytes handed to asyncssh at a time.
RECEIVE_SIZE = 256 * 1024
# Above this many queued outgoing bytes the SSH protocol is asked to pause.
WRITE_HIGH_WATER = 4 * 1024 * 1024
WRITE_LOW_WATER = 1024 * 1024
# How long a finished connection may take to flush its last bytes.
FLUSH_TIMEOUT = 5.0
# How long a PTY session keeps reading output after its shell exited
# (background jobs may hold the terminal open forever).
PTY_DRAIN_TIMEOUT = 1.0
# After SIGHUP to an abandoned session, how long before SIGKILL.
KILL_GRACE = 5.0
# SSH channel window and packet size: asyncssh's 2 MiB default window caps a
# single stream's throughput at window/RTT; bigger costs only memory.
CHANNEL_WINDOW = 8 * 1024 * 1024
# Child stdout/stderr pipe capacity (Linux default 64 KiB; 1 MiB is the unprivileged max).
PIPE_SIZE = 1024 * 1024


class HostKeyError(Exception):
    """The persisted host key exists but cannot be used."""


# ---------------------------------------------------------------- the loop


@contextlib.asynccontextmanager
async def asyncio_loop() -> AsyncIterator[None]:
    """Make a trio-asyncio loop current for the block: reuse one, or open one.

    The agent's main enters this once around everything; nested entries (each
    connection does one) find that loop and cost nothing.  Without an outer
    loop each entry opens its own, which is correct but slower.
    """
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_asyncio_error)
        yield


def _log_asyncio_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # trio-asyncio's default handler re-raises into the loop's nursery, which
    # would take every connection down with one stray callback error.
    exc = context.get("exception")
    log.error("asyncio: %s", context.get("message", "error"), exc_info=exc)


# ---------------------------------------------------------------- host key


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """Read the Ed25519 host key at ``path``, generating it (mode 0600) if absent.

    The key is written to a temporary file in the same directory and renamed
    into place, so a crash never leaves a half-written key.

    Raises:
        HostKeyError: the file exists but is not a readable private key.
        OSError: the directory is not writable.
    """
    if path.exists():
        try:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)  # a host key others can read is a leaked key
            return asyncssh.read_private_key(str(path))
        except (OSError, ValueError, asyncssh.KeyImportError) as exc:
            raise HostKeyError(f"cannot use SSH host key {path}: {exc}") from exc
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return key


# ---------------------------------------------------------------- transport


class _StreamTransport(asyncio.Transport):
    """An asyncio transport whose bytes travel over a trio stream.

    asyncio side (asyncssh calls these): write, write_eof, close, abort,
    pause_reading, resume_reading.  trio side: ``_pump_in`` and ``_pump_out``,
    started by :meth:`SSHServer.serve_stream` in its nursery.  Everything runs
    on the one trio thread, so the shared attributes need no lock.
    """

    def __init__(self, stream: trio.abc.Stream, peer: tuple[str, int], stats: ConnStats):
        super().__init__({"peername": peer, "sockname": ("burrow-agent", 22)})
        self._stream = stream
        self._stats = stats
        self._protocol: asyncio.BaseProtocol | None = None  # set by create_connection
        self._attached = trio.Event()  # set once the protocol is attached
        self._out: list[bytes] = []  # written by asyncssh, drained by _pump_out
        self._out_size = 0
        self._wake_out = trio.Event()  # _pump_out waits on it; write() sets it
        self._reading = trio.Event()  # set while reading is allowed
        self._reading.set()
        self._eof_wanted = False  # write_eof called; _pump_out sends it after the data
        self._closing = False  # close or abort called
        self._lost = False  # connection_lost delivered
        self._write_paused = False
        self.finished = trio.Event()  # _pump_out is done (flushed, or gave up)

    # -- asyncio.Transport (called from asyncssh) --

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def attach(self, protocol: asyncio.Protocol) -> None:
        self._protocol = protocol
        protocol.connection_made(self)
        self._attached.set()

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return self._reading.is_set()

    def pause_reading(self) -> None:
        if self._reading.is_set():
            self._reading = trio.Event()

    def resume_reading(self) -> None:
        self._reading.set()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_wanted or not data:
            return
        self._out.append(bytes(data))
        self._out_size += len(data)
        self._wake_out.set()
        if self._out_size > WRITE_HIGH_WATER and not self._write_paused:
            self._write_paused = True
            cast(asyncio.Protocol, self._protocol).pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._eof_wanted = True
        self._wake_out.set()

    def get_write_buffer_size(self) -> int:
        return self._out_size

    def close(self) -> None:
        """Flush what is queued, then close."""
        self._closing = True
        self._reading.set()
        self._wake_out.set()

    def abort(self) -> None:
        """Close without flushing more than what asyncssh already queued.

        asyncssh aborts right after queueing its DISCONNECT message, so the
        queue is still flushed (bounded by FLUSH_TIMEOUT in serve_stream).
        """
        self.close()

    # -- trio side --

    def _lose(self, exc: Exception | None) -> None:
        if self._lost or self._protocol is None:
            return
        self._lost = True
        self._closing = True
        self._reading.set()
        self._wake_out.set()
        self._protocol.connection_lost(exc)

    async def _pump_in(self) -> None:
        await self._attached.wait()
        protocol = cast(asyncio.Protocol, self._protocol)
        while not self._closing:
            await self._reading.wait()
            if self.is_closing():
                break
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._lose(ConnectionResetError(str(exc) or "stream broken"))
                return
            if not data:
                if not self._closing:
                    protocol.eof_received()
                    self._lose(None)
                return
            self._stats.add_in(len(data))
            try:
                protocol.data_received(cast(bytes, data))
            except Exception as exc:  # an asyncssh bug must end this connection only
                log.exception("ssh protocol error")
                self._lose(exc)
                return

    async def _pump_out(self) -> None:
        try:
            while True:
                await self._wake_out.wait()
                self._wake_out = trio.Event()
                while self._out:
                    chunk = b"".join(self._out) if len(self._out) > 1 else self._out[0]
                    self._out.clear()
                    self._out_size = 0
                    if self._write_paused:
                        self._write_paused = False
                        cast(asyncio.Protocol, self._protocol).resume_writing()
                    await self._stream.send_all(chunk)
                    self._stats.add_out(len(chunk))
                if self._eof_wanted and isinstance(self._stream, trio.abc.HalfCloseableStream):
                    await self._stream.send_eof()
                    self._eof_wanted = False
                if self._closing:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._out.clear()
            self._lose(ConnectionResetError(str(exc) or "stream broken"))
        finally:
            self.finished.set()


class _Tunnel:
    """The ``tunnel=`` object asyncssh asks for a connection to run over."""

    def __init__(self, transport: _StreamTransport):
        self._transport = transport

    async def create_connection(
        self, session_factory: Any, remote_host: str, remote_port: int
    ) -> tuple[_StreamTransport, Any]:
        conn = session_factory()
        self._transport.attach(conn)
        return self._transport, conn

    def close(self) -> None:
        self._transport.close()

    async def wait_closed(self) -> None:
        return None


# ---------------------------------------------------------------- SSH policy


class _Policy(asyncssh.SSHServer):
    """Per-connection policy: no auth (the tunnel did it), forwarding allowed."""

    def begin_auth(self, username: str) -> bool:
        return False  # no authentication required

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return True

    def unix_connection_requested(self, dest_path: str) -> bool:
        return True


def _sftp_factory(workdir: Path) -> Any:
    root = os.fsencode(workdir)

    class _WorkdirSFTP(asyncssh.SFTPServer):
        """asyncssh's SFTP server with relative paths rooted at the workspace dir."""

        def map_path(self, path: bytes) -> bytes:
            return path if path.startswith(b"/") else os.path.join(root, path)

        def exit(self) -> None:
            # sshd reports sftp-server's exit status; scp treats its absence
            # (ssh exiting 255) as a failed transfer.
            with contextlib.suppress(OSError):
                self.channel.exit(0)

    return _WorkdirSFTP


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


# ---------------------------------------------------------------- server


class SSHServer:
    """The agent's SSH service.

    Args:
        host_key_path: where the Ed25519 host key lives; created (0600) if absent.
        shell: the program sessions run; default the user's login shell.
        env: extra environment for sessions (the manifest's env); the client's
            ``SendEnv``/``SetEnv`` variables override it.
        workdir: sessions and relative SFTP paths start here; default ``$HOME``.
        stats: counters to update; a fresh :class:`ConnStats` if omitted.
        login_gate: while this event is unset, shell and exec sessions print
            ``login_gate_message`` on stderr and wait (``start_blocks_login``).
            SFTP and port forwards are not held.

    Raises:
        HostKeyError: the host key file exists but is unusable.
    """

    def __init__(
        self,
        host_key_path: Path,
        *,
        shell: str | None = None,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
        stats: ConnStats | None = None,
        login_gate: trio.Event | None = None,
        login_gate_message: str = "burrow: waiting for the workspace's startup script to finish",
    ) -> None:
        user = pwd.getpwuid(os.getuid())
        self.host_key = load_or_create_host_key(host_key_path)
        self.shell = shell or user.pw_shell or "/bin/sh"
        self.env = dict(env or {})
        self.workdir = workdir or Path(user.pw_dir)
        self.stats = stats if stats is not None else ConnStats()
        self._user = user
        self.login_gate = login_gate
        self.login_gate_message = login_gate_message

    def _options(self) -> dict[str, Any]:
        return {
            "server_host_keys": [self.host_key],
            "server_factory": _Policy,
            "process_factory": self._run_process,
            "sftp_factory": _sftp_factory(self.workdir),
            "encoding": None,
            "line_editor": False,
            "agent_forwarding": True,
            "x11_forwarding": False,
            "allow_scp": False,
            "window": CHANNEL_WINDOW,
            "keepalive_interval": 0,
        }

    async def serve_stream(
        self, stream: trio.abc.Stream, *, peer: tuple[str, int] = ("tunnel", 0)
    ) -> None:
        """Run one SSH connection over ``stream`` until it ends; close the stream.

        Handshake failures and peers that vanish end the connection quietly
        (logged); they are not errors of the caller.  Unexpected failures are
        logged and counted (``stats.errors``), never raised.
        """
        if isinstance(stream, trio.SocketStream) and peer == ("tunnel", 0):
            with contextlib.suppress(OSError):
                peer = cast(tuple[str, int], tuple(stream.socket.getpeername()[:2]))
        self.stats.session_opened()
        transport = _StreamTransport(stream, peer, self.stats)
        try:
            async with asyncio_loop(), trio.open_nursery() as nursery:
                nursery.start_soon(transport._pump_in)
                nursery.start_soon(transport._pump_out)
                conn: asyncssh.SSHServerConnection | None = None
                try:
                    conn = await trio_asyncio.aio_as_trio(self._accept)(transport)
                    await trio_asyncio.aio_as_trio(conn.wait_closed)()
                except (asyncssh.Error, OSError, TimeoutError) as exc:
                    log.info("ssh connection from %s ended: %s", peer, exc)
                finally:
                    if conn is not None:
                        conn.abort()  # no-op once closed; ends it if we were cancelled
                transport.close()
                with trio.move_on_after(FLUSH_TIMEOUT):
                    await transport.finished.wait()
                nursery.cancel_scope.cancel()
        except Exception:
            # Never let one connection's failure escape into the listener or
            # tunnel endpoint that runs every other connection.
            self.stats.error()
            log.exception("ssh connection from %s failed", peer)
        finally:
            self.stats.session_closed()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _accept(self, transport: _StreamTransport) -> asyncssh.SSHServerConnection:
        # run_server's socket is unused when a tunnel is given.
        return await asyncssh.run_server(
            cast(socket.socket, None), tunnel=_Tunnel(transport), **self._options()
        )

    async def serve_socket(self, sock: socket.socket) -> None:
        """Run one SSH connection on a connected socket with asyncssh's own transport.

        The baseline the stream path is measured against (bench/); the agent
        itself serves streams.
        """
        async def run() -> None:
            conn = await asyncssh.run_server(sock, **self._options())
            await conn.wait_closed()

        self.stats.session_opened()
        try:
            async with asyncio_loop():
                try:
                    await trio_asyncio.aio_as_trio(run)()
                except (asyncssh.Error, OSError, TimeoutError) as exc:
                    log.info("ssh connection ended: %s", exc)
        finally:
            self.stats.session_closed()

    async def serve_tcp(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve SSH on a TCP port, each connection through :meth:`serve_stream`.

        For tests and benchmarks: there is no authentication, so bind loopback
        only.  ``task_status.started`` reports the listeners (port 0 → real port).
        """
        async with asyncio_loop():
            await trio.serve_tcp(self.serve_stream, port, host=host, task_status=task_status)

    # -- sessions (asyncio side) --

    def _session_env(self, process: asyncssh.SSHServerProcess[bytes]) -> dict[str, str]:
        user = {
            "HOME": self._user.pw_dir,
            "USER": self._user.pw_name,
            "LOGNAME": self._user.pw_name,
            "SHELL": self.shell,
        }
        env = child_environ(user, self.env, process.env)
        peer = process.get_extra_info("peername")
        if peer:
            env["SSH_CLIENT"] = f"{peer[0]} {peer[1]} 22"
        agent_path = process.channel.get_agent_path()
        if agent_path:
            env["SSH_AUTH_SOCK"] = agent_path
        if process.term_type:
            env["TERM"] = process.term_type
        if process.command is not None:
            env["SSH_ORIGINAL_COMMAND"] = process.command
        return env

    def _argv(self, command: str | None) -> tuple[list[str], str]:
        name = os.path.basename(self.shell)
        if command is None:
            return ["-" + name], self.shell  # a login shell, as sshd starts it
        return [name, "-c", command], self.shell

    async def _run_process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        # asyncio side: hand the whole session to trio.
        await trio_asyncio.trio_as_aio(self._run_session)(process)

    async def _run_session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        if process.subsystem is not None:
            process.stderr.write(f"subsystem {process.subsystem!r} not supported\r\n".encode())
            process.exit(1)
            return
        if self.login_gate is not None and not self.login_gate.is_set():
            process.stderr.write(f"{self.login_gate_message}\r\n".encode())
            await self.login_gate.wait()
        env = self._session_env(process)
        argv, executable = self._argv(process.command)
        cwd = self.workdir if self.workdir.is_dir() else Path("/")
        tty: int | None = None
        try:
            if process.term_type:
                tty, slave = pty.openpty()
                try:
                    _set_winsize(tty, process.term_size)
                    child = await trio.lowlevel.open_process(
                        argv, executable=executable, stdin=slave, stdout=slave, stderr=slave,
                        cwd=cwd, env=env, start_new_session=True,
                        preexec_fn=_set_controlling_tty,
                    )
                finally:
                    os.close(slave)
            else:
                child = await trio.lowlevel.open_process(
                    argv, executable=executable, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, cwd=cwd, env=env, start_new_session=True,
                )
        except BaseException as exc:
            if tty is not None:
                os.close(tty)
            if not isinstance(exc, OSError):
                raise
            process.stderr.write(f"burrow agent: cannot start {executable}: {exc}\r\n".encode())
            process.exit(127)
            return
        status = await self._supervise(process, child, tty)
        if status is None:
            return  # the channel went away first; the child was hung up
        if status < 0:
            try:
                name = signal.Signals(-status).name.removeprefix("SIG")
            except ValueError:
                name = "KILL"
            process.exit_with_signal(name)
        else:
            process.exit(status)

    async def _supervise(
        self, process: asyncssh.SSHServerProcess[bytes], child: trio.Process, tty: int | None
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
