"""The client's side of coderd's coordinator messages (sans-IO: text in, events out).

Theory of operation.  A client holds one WebSocket to
``/api/v2/workspaceagents/<agent>/coordinate``.  coderd first sends
``welcome`` (with the relay map), then ``peer`` each time the agent
(re)announces its node and ``peer_gone`` when that agent connection goes
away; ``error`` precedes a close.  The client sends its own node with
:func:`node_message`.  :func:`parse_server_message` turns one text frame into
an event; anything malformed is a :class:`CoordinationError`, never a crash.
The message shapes are documented in ``coderd/coordinator.py``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_MESSAGE = 256 * 1024
_KEY = re.compile(r"[0-9a-f]{64}")


class CoordinationError(Exception):
    """coderd sent something we cannot use, or reported an error."""


@dataclass(frozen=True)
class Region:
    """One relay region of the relay map."""

    region_id: int
    code: str
    name: str
    url: str


@dataclass(frozen=True)
class Node:
    """A peer's tunnel node."""

    key: bytes
    home_region: int
    endpoints: tuple[tuple[str, int], ...] = ()
    region_latency_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Welcome:
    conn_id: str
    regions: tuple[Region, ...]


@dataclass(frozen=True)
class Peer:
    conn_id: str
    node: Node


@dataclass(frozen=True)
class PeerGone:
    conn_id: str


ServerMessage = Welcome | Peer | PeerGone


def parse_relay_map(obj: Any) -> tuple[Region, ...]:
    """Regions of a relay map (``{"regions": [...]}``); malformed entries are skipped.

    Raises:
        CoordinationError: not a relay map at all.
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("regions"), list):
        raise CoordinationError("the relay map has no regions list")
    out = []
    for r in obj["regions"]:
        if not isinstance(r, dict):
            continue
        rid, url = r.get("region_id"), r.get("url")
        if not isinstance(rid, int) or isinstance(rid, bool) or not isinstance(url, str):
            continue
        if not url.startswith(("http://", "https://")):
            continue
        out.append(Region(rid, str(r.get("code", "")), str(r.get("name", "")), url))
    return tuple(out)


def parse_endpoint(text: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` -> (host, port); None if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def parse_node(obj: Any) -> Node:
    """Raises CoordinationError for a node without a valid key."""
    if not isinstance(obj, dict):
        raise CoordinationError("peer node is not an object")
    key = obj.get("key")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise CoordinationError("peer node has no valid key")
    region = obj.get("home_region", 0)
    if not isinstance(region, int) or isinstance(region, bool):
        region = 0
    endpoints = []
    for e in obj.get("endpoints") or []:
        parsed = parse_endpoint(e) if isinstance(e, str) else None
        if parsed is not None:
            endpoints.append(parsed)
    latency_in = obj.get("region_latency_ms")
    latency = {
        str(k): float(v) for k, v in (latency_in.items() if isinstance(latency_in, dict) else ())
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return Node(bytes.fromhex(key), region, tuple(endpoints), latency)


def parse_server_message(text: str | bytes) -> ServerMessage | None:
    """One frame from coderd; None for message types this client does not know.

    Raises:
        CoordinationError: malformed, or coderd reported an error.
    """
    if len(text) > MAX_MESSAGE:
        raise CoordinationError("coordinator message too large")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise CoordinationError("coordinator sent something that is not JSON") from None
    if not isinstance(obj, dict):
        raise CoordinationError("coordinator message is not an object")
    kind = obj.get("type")
    conn_id = str(obj.get("id", ""))
    if kind == "welcome":
        return Welcome(conn_id, parse_relay_map(obj.get("relay_map")))
    if kind == "peer":
        return Peer(conn_id, parse_node(obj.get("node")))
    if kind == "peer_gone":
        return PeerGone(conn_id)
    if kind == "error":
        raise CoordinationError(f"coordinator: {str(obj.get('message', 'error'))[:200]}")
    return None


def node_message(key: bytes, home_region: int,
                 region_latency_ms: dict[int, float] | None = None) -> str:
    """Our node, as the text frame coderd expects."""
    node: dict[str, Any] = {"key": key.hex(), "home_region": home_region}
    if region_latency_ms:
        node["region_latency_ms"] = {
            str(k): round(v, 3) for k, v in list(region_latency_ms.items())[:32]
        }
    return json.dumps({"type": "node", "node": node}, separators=(",", ":"))
