"""An asyncio transport for asyncssh whose bytes travel over a ``trio.abc.Stream``.

One of the agent's SSH adapter modules (``agent/ssh_*.py``), the only modules
of the agent that touch asyncio.

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
option of :func:`asyncssh.run_server` (an object with ``create_connection``,
:class:`_Tunnel`), so asyncssh's own connection code does the rest.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import trio

from agent.stats import ConnStats

log = logging.getLogger("burrow.agent.ssh")

# One receive_some worth of bytes handed to asyncssh at a time.
RECEIVE_SIZE = 256 * 1024
# Above this many queued outgoing bytes the SSH protocol is asked to pause.
WRITE_HIGH_WATER = 4 * 1024 * 1024
WRITE_LOW_WATER = 1024 * 1024


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
