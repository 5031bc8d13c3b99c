"""Per-connection state of a DERP server: the client record and the token bucket.

Kept apart from ``derp.server`` so the server module holds only the task logic.
"""

from __future__ import annotations

from collections import deque

import trio

from derp.conn import raw_socket


class TokenBucket:
    """Bytes-per-second token bucket; ``take`` returns how long to wait (backpressure)."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    def take(self, n: int, now: float) -> float:
        """Spend ``n`` tokens (going into debt if needed); seconds until out of debt."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        return -self._tokens / self.rate if self._tokens < 0 else 0.0


class Client:
    """One registered DERP connection.

    Ownership, per attribute: "reader" is this connection's reader task (the
    task running ``DerpServer.serve``), "writer" its writer task, "any" means
    other connections' reader tasks append to it.
    """

    __slots__ = (
        "busy",
        "can_ack_pings",
        "can_mesh",
        "closed",
        "control",
        "key",
        "packets",
        "preferred",
        "remote",
        "replaced",
        "scope",
        "senders",
        "sock",
        "stream",
        "wake",
        "watching",
    )

    def __init__(
        self,
        key: bytes,
        stream: trio.abc.Stream,
        remote: str,
        *,
        can_mesh: bool,
        can_ack_pings: bool,
    ) -> None:
        self.key = key  # immutable
        self.stream = stream  # reader receives, writer sends
        # The socket under ``stream`` when writing its file descriptor directly
        # is equivalent to ``stream.send_all`` (plain TCP), else None.  Any
        # reader may write to it, synchronously, only while the writer is idle.
        self.sock = raw_socket(stream)
        self.remote = remote  # immutable, for logs
        self.can_mesh = can_mesh  # immutable: presented the right mesh key
        self.can_ack_pings = can_ack_pings  # immutable
        # Queued RecvPacket frames as (header+source key, data); appended by any
        # reader, drained by the writer; bounded by DerpServer.queue_size.
        self.packets: deque[tuple[bytes, bytes]] = deque()
        # Queued encoded control frames (Pong, PeerGone, PeerPresent, ...); any.
        self.control: deque[bytes] = deque()
        # Set by whoever queues something; replaced by the writer before it waits.
        self.wake = trio.Event()
        self.busy = False  # writer: inside send_all
        self.preferred = False  # reader: NotePreferred
        self.watching = False  # reader: sent WatchConns (mesh peers only)
        # Keys of local clients that sent to this one (any); they get PeerGone
        # when this client leaves.
        self.senders: set[bytes] = set()
        self.scope = trio.CancelScope()  # cancel to end this connection (any)
        self.closed = False  # serve(): set when the connection is over
        self.replaced = False  # any: a newer connection with the same key took over

    def idle(self) -> bool:
        """True when nothing is queued or being written."""
        return not self.packets and not self.control and not self.busy

