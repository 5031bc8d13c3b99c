"""The coordination messages: typed, sans-IO values with one parser and one encoder.

Theory of operation.  Every peer (a workspace agent, or a client such as
``burrow ssh`` that wants to reach one agent) holds one WebSocket to coderd's
coordinator and publishes its *node*: its tunnel public key, its home relay
region, its latency to each region and its direct endpoints.  coderd forwards
a node only to the peers entitled to it (see ``coderd/coordinator.py``).

Wire messages (JSON text frames)::

    peer -> coderd   {"type": "node", "node": NODE}
    coderd -> peer   {"type": "welcome", "id": CONN_ID, "relay_map": {...}}
                     {"type": "peer", "id": PEER_CONN_ID, "node": NODE}
                     {"type": "peer_gone", "id": PEER_CONN_ID}
                     {"type": "error", "message": TEXT}     (then close)

    NODE = {"key": 64 hex chars, "home_region": int,
            "region_latency_ms": {"<region id>": float, ...} (<= 32),
            "endpoints": ["host:port", ...] (<= 16)}

The relay map's shape is documented in :mod:`peer.relaymap`.

One parser, two policies.  :func:`parse_node` is *strict* where coderd reads
what a peer publishes (:func:`parse_node_message`): every field must be well
formed, unknown fields are refused, and the limits ``MAX_MESSAGE``,
``MAX_ENDPOINTS`` and ``MAX_REGIONS`` hold -- coderd vouches for what it
forwards.  It is *lenient* where a peer reads what coderd forwards
(:func:`parse_server_message`): a malformed optional field is dropped rather
than failing the message, so a newer coderd may extend nodes.  Either way,
anything that cannot be used is one :class:`~peer.errors.MessageError`,
never another exception.  Each message type encodes itself with ``encode()``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from peer.errors import MessageError
from peer.relaymap import Region, RelayMap

MAX_MESSAGE = 16 * 1024  # a peer's node message, as coderd accepts it
MAX_SERVER_MESSAGE = 256 * 1024  # a message from coderd (a welcome carries the map)
MAX_ENDPOINTS = 16
MAX_REGIONS = 32

_KEY = re.compile(r"[0-9a-f]{64}")
_ENDPOINT = re.compile(r"[0-9A-Za-z.:\[\]%-]{1,64}")

Endpoint = tuple[str, int]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _loads(data: str | bytes, limit: int) -> Any:
    if len(data) > limit:
        raise MessageError("message too large")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise MessageError("message is not JSON") from None


def parse_endpoint(text: str) -> Endpoint | None:
    """``host:port`` or ``[v6]:port`` -> (host, port); None if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def format_endpoint(endpoint: Endpoint) -> str:
    """(host, port) -> ``host:port`` (``[v6]:port`` for IPv6)."""
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Node:
    """A peer's tunnel node.

    Attributes:
        key: the tunnel public key (32 bytes).
        home_region: the relay region it is homed on (0: none yet).
        endpoints: direct (host, port) addresses to try.
        region_latency_ms: measured latency per region id (as text, as on the wire).
    """

    key: bytes
    home_region: int = 0
    endpoints: tuple[Endpoint, ...] = ()
    region_latency_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self, *, omit_empty: bool = False) -> dict[str, Any]:
        """The NODE object.  ``omit_empty`` leaves out empty optional fields (what
        a peer publishes); coderd's canonical copy has every field."""
        out: dict[str, Any] = {"key": self.key.hex(), "home_region": self.home_region}
        latency = {k: round(v, 3) for k, v in list(self.region_latency_ms.items())[:MAX_REGIONS]}
        endpoints = [format_endpoint(e) for e in self.endpoints[:MAX_ENDPOINTS]]
        if latency or not omit_empty:
            out["region_latency_ms"] = latency
        if endpoints or not omit_empty:
            out["endpoints"] = endpoints
        return out


def parse_node(obj: Any, *, strict: bool) -> Node:
    """A node from its JSON object (see the module docstring for the two policies).

    Raises:
        MessageError: no valid key; in strict mode also any malformed or unknown field.
    """

    def bad(why: str) -> None:
        if strict:
            raise MessageError(why)

    if not isinstance(obj, dict):
        raise MessageError("node must be an object")
    unknown = set(obj) - {"key", "home_region", "region_latency_ms", "endpoints"}
    if unknown:
        bad(f"unknown node fields: {', '.join(sorted(map(str, unknown)))[:200]}")
    key = obj.get("key")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise MessageError("node key must be 64 lower-case hex characters")
    region = obj.get("home_region", 0)
    if not _is_int(region) or not 0 <= region < 2**31:
        bad("home_region must be a non-negative integer")
        region = 0
    latency_in = obj.get("region_latency_ms", {})
    if not isinstance(latency_in, dict) or len(latency_in) > MAX_REGIONS:
        bad(f"region_latency_ms must be an object of <= {MAX_REGIONS}")
        latency_in = dict(list(latency_in.items())[:MAX_REGIONS]) \
            if isinstance(latency_in, dict) else {}
    latency: dict[str, float] = {}
    for k, v in latency_in.items():
        if not (isinstance(k, str) and k.isdigit() and len(k) <= 10):
            bad("region_latency_ms keys must be region ids")
            continue
        if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v < 1e6:
            bad("region_latency_ms values must be milliseconds")
            continue
        latency[k] = float(v)
    endpoints_in = obj.get("endpoints", [])
    if not isinstance(endpoints_in, list) or len(endpoints_in) > MAX_ENDPOINTS:
        bad(f"endpoints must be a list of <= {MAX_ENDPOINTS}")
        endpoints_in = endpoints_in[:MAX_ENDPOINTS] if isinstance(endpoints_in, list) else []
    endpoints: list[Endpoint] = []
    for e in endpoints_in:
        parsed = parse_endpoint(e) if isinstance(e, str) and _ENDPOINT.fullmatch(e) else None
        if parsed is None:
            bad("endpoints must be host:port strings")
            continue
        endpoints.append(parsed)
    return Node(bytes.fromhex(key), region, tuple(endpoints), latency)


# -- peer -> coderd ------------------------------------------------------------


@dataclass(frozen=True)
class NodeMessage:
    """``{"type": "node", "node": NODE}``: a peer publishes its node."""

    node: Node

    def encode(self) -> str:
        return _dumps({"type": "node", "node": self.node.to_json(omit_empty=True)})


def parse_node_message(data: str | bytes) -> Node:
    """What coderd accepts from a peer: only a (strictly valid) node message.

    Raises:
        MessageError: too big, not JSON, or not a valid node message.
    """
    obj = _loads(data, MAX_MESSAGE)
    if not isinstance(obj, dict) or obj.get("type") != "node" or set(obj) != {"type", "node"}:
        raise MessageError('expected {"type": "node", "node": {...}}')
    return parse_node(obj["node"], strict=True)


def node_message(key: bytes, home_region: int,
                 region_latency_ms: dict[int, float] | None = None,
                 endpoints: tuple[Endpoint, ...] = ()) -> str:
    """Our node, as the text frame coderd expects."""
    latency = {str(k): v for k, v in (region_latency_ms or {}).items()}
    return NodeMessage(Node(key, home_region, endpoints, latency)).encode()


# -- coderd -> peer ------------------------------------------------------------


@dataclass(frozen=True)
class Welcome:
    """The first message on a coordinator connection: our id and the relay map."""

    conn_id: str
    regions: tuple[Region, ...]

    @property
    def relay_map(self) -> RelayMap:
        return RelayMap(self.regions)

    def encode(self) -> str:
        return _dumps({"type": "welcome", "id": self.conn_id,
                       "relay_map": self.relay_map.to_json()})


@dataclass(frozen=True)
class Peer:
    """A peer we may tunnel with (re)announced its node."""

    conn_id: str
    node: Node

    def encode(self) -> str:
        return _dumps({"type": "peer", "id": self.conn_id, "node": self.node.to_json()})


@dataclass(frozen=True)
class PeerGone:
    """That peer's coordinator connection went away."""

    conn_id: str

    def encode(self) -> str:
        return _dumps({"type": "peer_gone", "id": self.conn_id})


@dataclass(frozen=True)
class Error:
    """coderd refuses what we sent; it closes the connection next."""

    message: str

    def encode(self) -> str:
        return _dumps({"type": "error", "message": self.message})


ServerMessage = Welcome | Peer | PeerGone


def parse_server_message(text: str | bytes) -> ServerMessage | None:
    """One frame from coderd; None for message types this peer does not know.

    Raises:
        MessageError: malformed, or coderd reported an error (``coordinator: ...``).
    """
    obj = _loads(text, MAX_SERVER_MESSAGE)
    if not isinstance(obj, dict):
        raise MessageError("coordinator message is not an object")
    kind = obj.get("type")
    conn_id = str(obj.get("id", ""))[:200]
    if kind == "welcome":
        return Welcome(conn_id, RelayMap.parse(obj.get("relay_map")).regions)
    if kind == "peer":
        return Peer(conn_id, parse_node(obj.get("node"), strict=False))
    if kind == "peer_gone":
        return PeerGone(conn_id)
    if kind == "error":
        raise MessageError(f"coordinator: {str(obj.get('message', 'error'))[:200]}")
    return None
