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

The wire messages and their one parser/encoder live in :mod:`peer.messages`
(documented there); coderd validates every node a peer publishes with its
strict policy, so what it forwards is well formed.

This module is the sans-IO part: validation and the pubsub event encoding.
The WebSocket loop lives in ``coderd/api/coordinate.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from peer.errors import MessageError
from peer.messages import MAX_ENDPOINTS, MAX_MESSAGE, MAX_REGIONS, parse_node, parse_node_message

__all__ = ["MAX_ENDPOINTS", "MAX_MESSAGE", "MAX_REGIONS", "REANNOUNCE", "CoordinatorError",
           "Event", "channel", "parse_peer_message", "validate_node"]

REANNOUNCE = 30.0

# A peer sent a malformed message (the connection is closed with the reason):
# the peer layer's one error, under the name coderd has always used.
CoordinatorError = MessageError


def channel(agent_id: str) -> str:
    return f"coord:{agent_id}"


def validate_node(obj: Any) -> dict[str, Any]:
    """A clean (canonical) copy of a node a peer published.

    Raises:
        CoordinatorError: any malformed or unknown field.
    """
    return parse_node(obj, strict=True).to_json()


def parse_peer_message(data: str | bytes) -> dict[str, Any]:
    """Decode a message from a peer: only ``{"type": "node", "node": NODE}``.

    Raises:
        CoordinatorError: too big, not JSON, or not a valid node message.
    """
    return parse_node_message(data).to_json()


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
