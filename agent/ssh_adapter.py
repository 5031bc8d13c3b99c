"""The agent's SSH server: asyncssh under trio, fed by any ``trio.abc.Stream``.

This module and the other SSH adapter modules (``agent/ssh_*.py``) are the
only modules of the agent that touch asyncio.  asyncssh is an asyncio library;
it runs here on a trio-asyncio loop (:func:`asyncio_loop`, opened once per
process and reused), so the rest of the agent stays trio.

The adapter is split along its seams; this module is the facade
(:class:`SSHServer`, the per-connection policy, SFTP) and re-exports the rest:

* :mod:`agent.ssh_loop` -- the trio-asyncio loop helper;
* :mod:`agent.ssh_hostkey` -- the persistent host key;
* :mod:`agent.ssh_transport` -- the asyncio transport over a trio stream;
* :mod:`agent.ssh_session` -- child processes (PTY, exec) and their I/O pumps.

Theory of operation
-------------------
SSH connections reach the agent as tunnel streams, not sockets.  asyncssh
normally owns a socket through an asyncio transport; here
:class:`_StreamTransport` (:mod:`agent.ssh_transport`) *is* the asyncio
transport, and two trio tasks pump it against the trio stream:

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
(or signal) goes back to the client.  Each session is its own process
group, recorded in :data:`agent.procgroups.tracked` while it has members, so
it is ended when the agent stops, and by the supervisor or the template's
stop step if the agent is killed.  The child's I/O is pumped by trio tasks
(``_ChildInput``, ``_pump_output`` in :mod:`agent.ssh_session`) plugged into
asyncssh's process reader and writer hooks, not by asyncssh's ``redirect``:
its asyncio pipe transports race with trio-asyncio's fd watchers when a pipe
closes (EBADF, lost output).

SFTP is asyncssh's server with relative paths resolved in the workspace
directory; like sshd it ends with exit status 0 (scp counts on it).  Local
(-L) and remote (-R) TCP forwarding and agent forwarding (-A) are allowed.
A ``login_gate`` holds shell and exec sessions until startup is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pty
import pwd
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import asyncssh
import trio
import trio_asyncio

from agent import procgroups
from agent.environ import child_environ
from agent.ssh_hostkey import HostKeyError, load_or_create_host_key
from agent.ssh_loop import _log_asyncio_error, asyncio_loop
from agent.ssh_session import (
    KILL_GRACE,
    PIPE_SIZE,
    PTY_DRAIN_TIMEOUT,
    _ChildInput,
    _grow_pipe,
    _kill_group,
    _OutputGate,
    _pump_output,
    _set_controlling_tty,
    _set_winsize,
    supervise,
)
from agent.ssh_transport import (
    RECEIVE_SIZE,
    WRITE_HIGH_WATER,
    WRITE_LOW_WATER,
    _StreamTransport,
    _Tunnel,
)
from agent.stats import ConnStats

# Everything the adapter had before it was split still imports from here.
__all__ = [
    "CHANNEL_WINDOW",
    "FLUSH_TIMEOUT",
    "KILL_GRACE",
    "PIPE_SIZE",
    "PTY_DRAIN_TIMEOUT",
    "RECEIVE_SIZE",
    "WRITE_HIGH_WATER",
    "WRITE_LOW_WATER",
    "HostKeyError",
    "SSHServer",
    "_ChildInput",
    "_OutputGate",
    "_StreamTransport",
    "_Tunnel",
    "_grow_pipe",
    "_kill_group",
    "_log_asyncio_error",
    "_pump_output",
    "_set_controlling_tty",
    "_set_winsize",
    "asyncio_loop",
    "load_or_create_host_key",
    "supervise",
]

log = logging.getLogger("burrow.agent.ssh")

# How long a finished connection may take to flush its last bytes.
FLUSH_TIMEOUT = 5.0
# SSH channel window and packet size: asyncssh's 2 MiB default window caps a
# single stream's throughput at window/RTT; bigger costs only memory.
CHANNEL_WINDOW = 8 * 1024 * 1024


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
        # Recorded so that what outlives the agent can end it (agent.procgroups).
        procgroups.tracked.add(child.pid)
        try:
            status = await supervise(process, child, tty)
        finally:
            procgroups.tracked.release(child.pid)
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

