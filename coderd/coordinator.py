"""The coordinator: agents and clients exchange their tunnel nodes through coderd.

Theory of operation.  Every peer (a workspace agent, or a client such as
``burrow ssh`` that wants to reach one agent) holds one WebSocket to coderd
and publishes its *node*: its tunnel public key, its home relay region, its
latency to each region and its direct endpoints.  coderd forwards a node
only to peers entitled to it:

* a client connects for one agent, after the router checked that its user
  owns that agent's workspace (or has the owner role); it receives that
  agent's node;
* an agent receives the nodes of the clients connected for it -- these are
  exactly the keys allowed to open tunnel sessions to it.

Every connection, on whichever replica, subscribes to the pubsub channel
``coord:<agent_id>`` and publishes its own events there; it picks from the
channel what concerns its role (an agent connection takes client events, a
client connection agent events).  So there is no shared in-memory state and
replicas on one Postgres coordinate through LISTEN/NOTIFY exactly as one
replica does in process.  A newcomer publishes a ``hello`` so that the
other side re-announces its node; nodes are also re-announced every
``REANNOUNCE`` seconds, which heals messages a full buffer dropped.

Wire messages (JSON text frames)::

    peer -> coderd   {"type": "node", "node": NODE}
    coderd -> peer   {"type": "welcome", "id": CONN_ID, "relay_map": {...}}
                     {"type": "peer", "id": PEER_CONN_ID, "node": NODE}
                     {"type": "peer_gone", "id": PEER_CONN_ID}
                     {"type": "error", "message": TEXT}     (then close)

    NODE = {"key": 64 hex chars, "home_region": int,
            "region_latency_ms": {"<region id>": float, ...} (<= 32),
            "endpoints": ["host:port", ...] (<= 16)}

This module is the sans-IO part: validation and the pubsub event encoding.
The WebSocket loop lives in ``coderd/api/coordinate.py``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE = 16 * 1024
MAX_ENDPOINTS = 16
MAX_REGIONS = 32
REANNOUNCE = 30.0

_KEY = re.compile(r"[0-9a-f]{64}")
_ENDPOINT = re.compile(r"[0-9A-Za-z.:\[\]%-]{1,64}")


class CoordinatorError(Exception):
    """A peer sent a malformed message (the connection is closed with the reason)."""


def channel(agent_id: str) -> str:
    return f"coord:{agent_id}"


def validate_node(obj: Any) -> dict[str, Any]:
    """A clean copy of a node, or CoordinatorError."""
    if not isinstance(obj, dict):
        raise CoordinatorError("node must be an object")
    unknown = set(obj) - {"key", "home_region", "region_latency_ms", "endpoints"}
    if unknown:
        raise CoordinatorError(f"unknown node fields: {', '.join(sorted(unknown))[:200]}")
    key = obj.get("key")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise CoordinatorError("node key must be 64 lower-case hex characters")
    region = obj.get("home_region", 0)
    if not isinstance(region, int) or isinstance(region, bool) or not 0 <= region < 2**31:
        raise CoordinatorError("home_region must be a non-negative integer")
    latency = obj.get("region_latency_ms", {})
    if not isinstance(latency, dict) or len(latency) > MAX_REGIONS:
        raise CoordinatorError(f"region_latency_ms must be an object of <= {MAX_REGIONS}")
    clean_latency: dict[str, float] = {}
    for k, v in latency.items():
        if not (isinstance(k, str) and k.isdigit() and len(k) <= 10):
            raise CoordinatorError("region_latency_ms keys must be region ids")
        if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v < 1e6:
            raise CoordinatorError("region_latency_ms values must be milliseconds")
        clean_latency[k] = float(v)
    endpoints = obj.get("endpoints", [])
    if not isinstance(endpoints, list) or len(endpoints) > MAX_ENDPOINTS:
        raise CoordinatorError(f"endpoints must be a list of <= {MAX_ENDPOINTS}")
    for e in endpoints:
        if not isinstance(e, str) or not _ENDPOINT.fullmatch(e):
            raise CoordinatorError("endpoints must be host:port strings")
    return {
        "key": key,
        "home_region": region,
        "region_latency_ms": clean_latency,
        "endpoints": list(endpoints),
    }


def parse_peer_message(data: str | bytes) -> dict[str, Any]:
    """Decode a message from a peer: only ``{"type": "node", "node": NODE}``.

    Raises:
        CoordinatorError: too big, not JSON, or not a valid node message.
    """
    if len(data) > MAX_MESSAGE:
        raise CoordinatorError("message too large")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        raise CoordinatorError("message is not JSON") from None
    if not isinstance(obj, dict) or obj.get("type") != "node" or set(obj) != {"type", "node"}:
        raise CoordinatorError('expected {"type": "node", "node": {...}}')
    return validate_node(obj["node"])


@dataclass(frozen=True)
class Event:
    """What a connection publishes on its agent's channel.

    ``kind``: ``node`` (here is my node), ``hello`` (I am new: re-announce),
    ``gone`` (I disconnected).  ``role``: ``agent`` or ``client``.
    """

    kind: str
    role: str
    conn_id: str
    node: dict[str, Any] | None = None

    def encode(self) -> str:
        obj: dict[str, Any] = {"k": self.kind, "r": self.role, "c": self.conn_id}
        if self.node is not None:
            obj["n"] = self.node
        return json.dumps(obj, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Event | None:
        """None for anything that is not an event (pubsub is shared; be lenient)."""
        try:
            obj = json.loads(text)
            kind, role, conn = obj["k"], obj["r"], obj["c"]
        except (ValueError, KeyError, TypeError):
            return None
        if kind not in ("node", "hello", "gone") or role not in ("agent", "client"):
            return None
        node = obj.get("n")
        return cls(str(kind), str(role), str(conn), node if isinstance(node, dict) else None)
