"""In-process counters of a DERP server (Prometheus export comes later, with coderd).

Plain integer attributes are bumped on the hot path; reasons go in Counters.
``snapshot()`` returns a JSON-ready copy.
"""

from __future__ import annotations

from collections import Counter


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
        drops: packets dropped, by reason (unknown_dest, queue_full, disconnected,
            write_error, duplicate_client, mesh_queue_full, ...).
        protocol_errors: connections closed for peer misbehaviour, by reason.
        closes: why connections ended (eof, read_error, write_error, write_timeout,
            replaced, protocol_error, server_closing, closed_by_mesh).
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
        self.drops: Counter[str] = Counter()
        self.protocol_errors: Counter[str] = Counter()
        self.closes: Counter[str] = Counter()

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` packets dropped for ``reason``."""
        self.drops[reason] += n

    def snapshot(self) -> dict[str, object]:
        """A JSON-ready copy of every counter; reason counters are nested dicts."""
        out: dict[str, object] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, Counter) else value
        return out
