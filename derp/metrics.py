"""In-process counters of a DERP server (rendered for Prometheus by ``coderd.metrics``).

Plain integer attributes are bumped on the hot path; reasons go in Counters
keyed by closed ``StrEnum`` lists (``DropReason``, ``CloseReason``,
``derp.errors.ProtocolErrorReason``), every reason present from the start
with 0 (as Tailscale's derpserver registers each drop reason at start-up), so
a reason nobody counts shows up as a 0 instead of being missing.
``snapshot()`` returns a JSON-ready copy.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum

from derp.errors import ProtocolErrorReason


class DropReason(StrEnum):
    """Why a packet was dropped instead of delivered; the values are metric keys."""

    UNKNOWN_DEST = "unknown_dest"  # no such client here or on a mesh sibling
    UNKNOWN_DEST_ON_FORWARD = "unknown_dest_on_forward"  # a sibling forwarded to nobody
    QUEUE_FULL = "queue_full"  # the destination's queue was full: oldest dropped
    CONTROL_QUEUE_FULL = "control_queue_full"  # a client's control frames backed up
    DISCONNECTED = "disconnected"  # queued for a client that went away
    WRITE_ERROR = "write_error"  # being written when the write failed or timed out
    DUPLICATE_CLIENT = "duplicate_client"  # being written when a newer connection took the key
    MESH_QUEUE_FULL = "mesh_queue_full"  # a mesh link's queue was full: oldest dropped


class CloseReason(StrEnum):
    """Why a client connection ended; the values are metric keys."""

    EOF = "eof"
    READ_ERROR = "read_error"
    WRITE_ERROR = "write_error"
    WRITE_TIMEOUT = "write_timeout"
    REPLACED = "replaced"
    PROTOCOL_ERROR = "protocol_error"
    SERVER_CLOSING = "server_closing"
    CLOSED_BY_MESH = "closed_by_mesh"


class Metrics:
    """Counters of one DerpServer.

    Attributes:
        clients_connected: registered client connections now (set by the server).
        clients_total: connections that completed the handshake, ever.
        mesh_peers: connected clients that presented the mesh key.
        mesh_links: outbound mesh links currently up.
        duplicate_clients: connections replaced by a newer one with the same key.
        packets_in / bytes_in: SendPacket/ForwardPacket frames (and data bytes) read.
        packets_out / bytes_out: RecvPacket frames (and data bytes) written to clients.
        packets_forwarded: packets sent on to a mesh sibling.
        drops: packets dropped, by ``DropReason``.
        protocol_errors: connections closed for peer misbehaviour, by
            ``ProtocolErrorReason``.
        closes: why connections ended, by ``CloseReason``.
    """

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "clients_connected",
        "clients_total",
        "closes",
        "drops",
        "duplicate_clients",
        "mesh_links",
        "mesh_peers",
        "packets_forwarded",
        "packets_in",
        "packets_out",
        "protocol_errors",
    )

    def __init__(self) -> None:
        self.clients_connected = 0
        self.clients_total = 0
        self.mesh_peers = 0
        self.mesh_links = 0
        self.duplicate_clients = 0
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.packets_forwarded = 0
        self.drops: Counter[DropReason] = Counter(dict.fromkeys(DropReason, 0))
        self.protocol_errors: Counter[ProtocolErrorReason] = Counter(
            dict.fromkeys(ProtocolErrorReason, 0)
        )
        self.closes: Counter[CloseReason] = Counter(dict.fromkeys(CloseReason, 0))

    def drop(self, reason: DropReason, n: int = 1) -> None:
        """Count ``n`` packets dropped for ``reason``."""
        self.drops[reason] += n

    def close(self, reason: CloseReason) -> None:
        """Count one connection ended for ``reason``."""
        self.closes[reason] += 1

    def snapshot(self) -> dict[str, object]:
        """A JSON-ready copy of every counter; reason counters are nested dicts."""
        out: dict[str, object] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, Counter):
                value = {str(k): v for k, v in value.items()}
            out[name] = value
        return out
