"""``TunnelStream``: one tunnel stream as a ``trio.abc.HalfCloseableStream``.

The stream keeps the application's side in a ``_State`` (OPEN -> EOF_SENT ->
CLOSED, or OPEN -> CLOSED; like ``SSLStream``'s) and holds its
``StreamState`` (the wire's side, owned by the ``Connection``).  Waiting is
done on per-stream events its host sets when the connection reports the
stream changed.  The host is a ``StreamHost`` (the session implements it):
this module never imports the session, so the session may build streams
without an import circle.  Errors map like ``SSLStream``: a peer reset, a
STOP, or a failed session -> ``trio.BrokenResourceError`` (with the tunnel
error as ``__cause__``); using a stream after ``aclose`` or sending after
``send_eof`` -> ``trio.ClosedResourceError``.
"""

from __future__ import annotations

import enum
from typing import Protocol

import trio

from derp.conflict import ConflictGuard
from tunnel.connection import Connection, StreamState
from tunnel.errors import ResetReason, StreamResetError, TunnelError
from tunnel.frames import ErrorCode

DEFAULT_RECEIVE = 256 * 1024


class StreamHost(Protocol):
    """What a ``TunnelStream`` needs from the session that carries it.

    Attributes:
        conn: the current connection; replaced when the peer restarts (a
            stream built on an older one is then broken).
        error: why the session ended, once it has.
        peer_key: the peer's node key.
    """

    conn: Connection
    error: TunnelError | None
    peer_key: bytes

    async def flush_now(self) -> None:
        """Send what the connection has ready, from the calling task."""

    async def wait_stream(self, sid: int) -> None:
        """Wait until stream ``sid`` changed (or the session ended)."""

    def notify_stream(self, sid: int) -> bool:
        """Wake the task waiting on stream ``sid``; True if there was one."""

    def wake(self) -> None:
        """Have the sender task send what the connection has ready."""

    def after_read(self) -> None:
        """A reader took bytes: window updates may be due."""


class _State(enum.Enum):
    """The application's side of the stream (the connection keeps the wire's)."""

    OPEN = "open"
    EOF_SENT = "eof_sent"  # send_eof called: receiving only
    CLOSED = "closed"  # aclose or reset called: nothing more


class TunnelStream(trio.abc.HalfCloseableStream):
    """A reliable, ordered byte stream to a service on the peer.

    Attributes:
        peer_key: the peer's node key.
        service: the service name the stream was opened for.
    """

    def __init__(self, session: StreamHost, state: StreamState) -> None:
        self._session = session
        self._conn = session.conn
        self._st = state
        self.sid = state.sid
        self.peer_key = session.peer_key
        self.service = state.service
        self._state = _State.OPEN
        self._send_conflict = ConflictGuard("sending on this stream")
        self._recv_conflict = ConflictGuard("receiving on this stream")

    def _live(self) -> bool:
        """The session is up and still on the connection this stream lives on."""
        return self._session.error is None and self._session.conn is self._conn

    def _session_error(self) -> TunnelError | None:
        if self._session.error is not None:
            return self._session.error
        if self._session.conn is not self._conn:
            return StreamResetError(ErrorCode.SESSION_ENDED, "peer restarted")
        return None

    def _check_sending(self) -> None:
        if self._state is not _State.OPEN:
            raise trio.ClosedResourceError("stream closed for sending")

    def _send_error(self) -> BaseException | None:
        st = self._st
        if st.sender.aborted:
            code, reason = st.error if st.error else (ErrorCode.STOPPED, "stream reset")
            if st.sender.stopped is not None:
                code, reason = st.sender.stopped, ResetReason.PEER_STOPPED
            return StreamResetError(code, reason)
        return self._session_error()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``, waiting for buffer space.

        Raises:
            trio.ClosedResourceError: after ``aclose`` or ``send_eof``.
            trio.BrokenResourceError: the stream was reset/stopped or the session ended.
            trio.BusyResourceError: another task is sending.
        """
        with self._send_conflict:
            self._check_sending()
            # Cancel point first, schedule point last: the bytes are queued
            # before we yield, so the session's sender sees them at once.
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data).cast("B")
            while True:
                if self._state is _State.CLOSED:
                    raise trio.ClosedResourceError("stream closed")
                err = self._send_error()
                if err is not None:
                    raise trio.BrokenResourceError(str(err)) from err
                if not view:
                    await self._session.flush_now()
                    return
                n = self._conn.write(self.sid, view)
                if n:
                    view = view[n:]
                    continue
                await self._session.flush_now()
                if self._conn.send_space(self.sid) == 0:
                    await self._session.wait_stream(self.sid)

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until ``send_all`` would accept bytes without waiting."""
        with self._send_conflict:
            self._check_sending()
            await trio.lowlevel.checkpoint()
            while (
                self._conn.send_space(self.sid) == 0
                and self._send_error() is None
                and self._state is not _State.CLOSED
            ):
                await self._session.wait_stream(self.sid)
            if self._state is _State.CLOSED:
                raise trio.ClosedResourceError("stream closed")

    async def send_eof(self) -> None:
        """Finish our direction: the peer reads EOF after the bytes sent so far."""
        with self._send_conflict:
            if self._state is _State.CLOSED:
                raise trio.ClosedResourceError("stream closed")
            await trio.lowlevel.checkpoint()
            if self._state is _State.OPEN:
                self._state = _State.EOF_SENT
                self._conn.send_eof(self.sid)
                self._session.wake()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Return the next bytes (b"" at EOF).

        Raises:
            trio.ClosedResourceError: after ``aclose``.
            trio.BrokenResourceError: the peer reset the stream or the session ended.
            trio.BusyResourceError: another task is receiving.
        """
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE
        if not isinstance(max_bytes, int):
            raise TypeError("max_bytes must be an int")
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._recv_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            st = self._st
            rx = st.receiver
            waited = False
            while True:
                if self._state is _State.CLOSED:
                    raise trio.ClosedResourceError("stream closed")
                if rx.buf:
                    data = self._conn.read(self.sid, max_bytes)
                    if data:
                        self._session.after_read()
                        if not waited:
                            await trio.lowlevel.cancel_shielded_checkpoint()
                        return data
                if rx.aborted:
                    code, reason = st.error or (ErrorCode.CLOSED, "reset")
                    err = StreamResetError(code, reason)
                    raise trio.BrokenResourceError(str(err)) from err
                if rx.at_eof:
                    if not waited:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                serr = self._session_error()
                if serr is not None:
                    raise trio.BrokenResourceError(str(serr)) from serr
                await self._session.wait_stream(self.sid)
                waited = True

    def reset(self, code: int = ErrorCode.CLOSED, reason: str = "") -> None:
        """Abort both directions at once: the peer sees ``StreamResetError``."""
        if self._session.conn is self._conn:
            self._conn.reset(self.sid, code, reason)
            self._conn.close_read(self.sid)
            self._session.wake()
        self._state = _State.CLOSED
        self._session.notify_stream(self.sid)

    async def aclose(self) -> None:
        """Close gracefully: FIN our direction (buffered bytes still arrive) and
        STOP the peer's if it has not ended; unread bytes are discarded."""
        if self._state is not _State.CLOSED:
            eof_sent = self._state is _State.EOF_SENT
            self._state = _State.CLOSED
            if self._live():
                if self._st.receiver.has_unread():
                    self._conn.reset(self.sid, ErrorCode.CLOSED, ResetReason.UNREAD_DATA)
                elif not eof_sent:
                    self._conn.send_eof(self.sid)
                self._conn.close_read(self.sid)
                self._session.wake()
            self._session.notify_stream(self.sid)
        await trio.lowlevel.checkpoint()
