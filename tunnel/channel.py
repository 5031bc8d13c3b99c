"""The secure channel to one peer: handshakes, keypairs and rekeying.

Theory of operation
-------------------
A ``Channel`` turns datagrams from one peer into authenticated plaintexts and
plaintexts into records, sans-IO (the caller passes the time and sends what
``take_outgoing`` returns). It holds up to three keypairs, by the index the
peer puts in records for us:

* ``current``: the keypair we seal with;
* ``previous``: the one before, kept to open records still in flight;
* ``next``: as responder, keys from a handshake we answered but the
  initiator has not used yet. Like WireGuard, the responder does not seal
  with them until a record under them arrives (proving the initiator got our
  response); the initiator therefore sends one empty record as soon as it
  has the response.

The initiator role is taken by whoever needs keys: at start, when the current
keypair reaches a soft limit (``Limits``), or when the hard limit expired it.
An initiation without response is re-sent with a fresh ephemeral key and
timestamp every ``retry`` seconds, and the channel reports failure after
``timeout``. Anything that fails to authenticate is dropped and counted in
``dropped`` by reason; nothing the peer sends raises out of ``receive``.
"""

from __future__ import annotations

import os
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from tunnel.errors import DropReason, ProtocolError, ProtocolErrorReason, UnknownPeerError
from tunnel.handshake import (
    MSG_INITIATION,
    MSG_RECORD,
    MSG_RESPONSE,
    InitiatorState,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    public_key,
    response_receiver_index,
    tai64n,
)
from tunnel.record import Keypair, Limits, record_receiver_index


@dataclass(frozen=True)
class Received:
    """What one datagram produced.

    Attributes:
        plaintext: an authenticated record's plaintext, or None.
        established: a handshake completed with this datagram.
        peer_instance: the peer's instance id when ``established``.
    """

    plaintext: bytearray | None = None
    established: bool = False
    peer_instance: bytes = b""


_NOTHING = Received()


class Channel:
    """Handshake and record state for one peer (see module docstring)."""

    def __init__(
        self,
        local_private: bytes,
        peer_static: bytes,
        *,
        instance: bytes,
        limits: Limits | None = None,
        retry: float = 1.0,
        timeout: float = 15.0,
        last_timestamps: dict[bytes, bytes] | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.local_private = local_private
        self.local_public = public_key(local_private)
        self.peer_static = peer_static
        self.instance = instance
        self.limits = limits or Limits()
        self.retry = retry
        self.timeout = timeout
        # Newest initiation timestamp accepted per initiator; shared across
        # channels by the endpoint so a replaced channel still rejects replays.
        self.last_timestamps = last_timestamps if last_timestamps is not None else {}
        self._wall_ns = wall_ns
        self._last_sent_ts = b""
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self._pending: InitiatorState | None = None
        self._pending_sent = 0.0
        self._pending_started = 0.0
        self._outgoing: list[bytes | bytearray] = []
        self.dropped: Counter[DropReason | ProtocolErrorReason] = Counter()
        self.handshakes = 0

    # -- sending --------------------------------------------------------
    def can_seal(self, now: float) -> bool:
        """True when a usable keypair exists to seal with."""
        return self.current is not None and not self.current.expired(now)

    def seal(self, plaintext: bytes | bytearray, now: float) -> bytearray | None:
        """Seal one record with the current keypair, or None if there is none."""
        kp = self.current
        if kp is None or kp.expired(now):
            return None
        return kp.seal(plaintext)

    def take_outgoing(self) -> list[bytes | bytearray]:
        """Handshake messages (and key confirmations) waiting to be sent."""
        out, self._outgoing = self._outgoing, []
        return out

    # -- timers ---------------------------------------------------------
    def handshake_pending(self) -> bool:
        return self._pending is not None

    def handshake_failed(self, now: float) -> bool:
        """True when an initiation has gone unanswered for ``timeout`` seconds."""
        return self._pending is not None and now >= self._pending_started + self.timeout

    def next_deadline(self) -> float | None:
        """When ``tick`` next needs to run (an initiation retry), if ever."""
        if self._pending is None:
            return None
        return self._pending_sent + self.retry

    def tick(self, now: float) -> None:
        """Start or retry a handshake when one is due."""
        if self._pending is not None:
            if now >= self._pending_sent + self.retry:
                self._send_initiation(now, restart=False)
            return
        kp = self.current
        if kp is None:
            if self.next is None:
                self._send_initiation(now, restart=True)
            return
        lim = self.limits
        due = self.rekey_deadline()
        if (
            (due is not None and now >= due)
            or kp.send_counter >= lim.rekey_after_messages
            or kp.bytes_sent >= lim.rekey_after_bytes
            or kp.expired(now)
        ):
            self._send_initiation(now, restart=True)

    def rekey_deadline(self) -> float | None:
        """When age alone makes ``tick`` start a rekey (None: not applicable).

        The side that was the responder waits 10% longer, so that usually only
        one side starts.
        """
        kp = self.current
        if kp is None or self._pending is not None:
            return None
        margin = 0.0 if kp.keys.initiator else self.limits.rekey_after_time * 0.1
        return kp.created + self.limits.rekey_after_time + margin

    def has_outgoing(self) -> bool:
        return bool(self._outgoing)

    def start_handshake(self, now: float) -> None:
        """Begin a handshake now unless one is already pending."""
        if self._pending is None:
            self._send_initiation(now, restart=True)

    def _timestamp(self) -> bytes:
        ts = tai64n(self._wall_ns())
        if ts <= self._last_sent_ts:  # strictly increasing even if the clock is not
            secs, nanos = struct.unpack(">QI", self._last_sent_ts)
            ts = struct.pack(">QI", secs, nanos + 1)
        self._last_sent_ts = ts
        return ts

    def _send_initiation(self, now: float, *, restart: bool) -> None:
        index = int.from_bytes(os.urandom(4), "big")
        msg, state = create_initiation(
            self.local_private,
            self.peer_static,
            local_index=index,
            timestamp=self._timestamp(),
            instance=self.instance,
        )
        self._pending = state
        self._pending_sent = now
        if restart:
            self._pending_started = now
        self._outgoing.append(msg)

    # -- receiving ------------------------------------------------------
    def receive(self, datagram: bytes, now: float) -> Received:
        """Process one datagram from the peer; never raises for bad input."""
        if not datagram:
            self.dropped[DropReason.EMPTY] += 1
            return _NOTHING
        kind = datagram[0]
        try:
            if kind == MSG_RECORD:
                return self._on_record(datagram, now)
            if kind == MSG_INITIATION:
                return self._on_initiation(datagram, now)
            if kind == MSG_RESPONSE:
                return self._on_response(datagram, now)
        except ProtocolError as exc:
            self.dropped[exc.reason] += 1
            return _NOTHING
        self.dropped[DropReason.UNKNOWN_TYPE] += 1
        return _NOTHING

    def _keypair_for(self, index: int) -> Keypair | None:
        for kp in (self.current, self.next, self.previous):
            if kp is not None and kp.keys.local_index == index:
                return kp
        return None

    def _on_record(self, datagram: bytes, now: float) -> Received:
        kp = self._keypair_for(record_receiver_index(datagram))
        if kp is None:
            self.dropped[DropReason.UNKNOWN_INDEX] += 1
            return _NOTHING
        if kp.expired(now):
            self.dropped[DropReason.EXPIRED_KEYS] += 1
            return _NOTHING
        plaintext = kp.open(datagram)
        if kp is self.next:  # the initiator has our response: switch to it
            self.previous, self.current, self.next = self.current, kp, None
        return Received(plaintext=plaintext)

    def _on_initiation(self, datagram: bytes, now: float) -> Received:
        def authorize(key: bytes) -> bool:
            return key == self.peer_static

        try:
            state = consume_initiation(
                self.local_private,
                datagram,
                authorize=authorize,
                last_timestamp=self.last_timestamps.get,
            )
        except UnknownPeerError:
            self.dropped[DropReason.STATIC_KEY_MISMATCH] += 1
            return _NOTHING
        self.last_timestamps[state.peer_static] = state.timestamp
        index = int.from_bytes(os.urandom(4), "big")
        msg, keys = create_response(state, local_index=index, instance=self.instance)
        self.next = Keypair(keys, now, self.limits)
        self._outgoing.append(msg)
        self.handshakes += 1
        return Received(established=True, peer_instance=keys.peer_instance)

    def _on_response(self, datagram: bytes, now: float) -> Received:
        pending = self._pending
        if pending is None or response_receiver_index(datagram) != pending.local_index:
            self.dropped[DropReason.UNEXPECTED_RESPONSE] += 1
            return _NOTHING
        keys = consume_response(pending, datagram)
        self._pending = None
        self.previous, self.current = self.current, Keypair(keys, now, self.limits)
        # Confirm the keys at once so the responder may start sealing with them.
        self._outgoing.append(self.current.seal(b""))
        self.handshakes += 1
        return Received(established=True, peer_instance=keys.peer_instance)
