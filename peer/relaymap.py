"""The relay map: the regions a peer can home on (sans-IO, no trio).

A *region* is a set of relay nodes that mesh with each other (the primary's
``burrow server`` replicas, or one registered ``burrow relay`` deployment):
a peer homed on any node of a region is reachable through every node of it.
coderd health-checks regions and marks one unhealthy (``healthy: false``)
instead of dropping it, so peers stop homing there but still know it.

JSON, as coderd serves it (``GET /api/v2/relaymap``, the agent manifest's
``relay_map`` and the coordinator's ``welcome``)::

    {"regions": [
        {"region_id": int, "code": str, "name": str,
         "url": "http(s)://...",          # the region's first node, for old readers
         "derp_url": str, "public_key": str,
         "healthy": bool,                 # absent means true
         "nodes": [{"name": str, "url": "http(s)://...",
                    "derp_url": str, "public_key": str}, ...]},   # absent: one node at url
        ...]}

Parsing is lenient per entry (a malformed region or node is skipped, so a
newer coderd can add fields and kinds) but a map without a ``regions`` list
is a :class:`~peer.errors.MessageError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from peer.errors import MessageError

MAX_REGIONS = 32
MAX_NODES = 16


def _http_url(value: Any) -> str | None:
    if isinstance(value, str) and value.startswith(("http://", "https://")) and len(value) < 2048:
        return value
    return None


@dataclass(frozen=True)
class RelayNode:
    """One relay server of a region.

    Attributes:
        url: its base URL (``/derp`` and ``/derp/latency-check`` live under it).
        derp_url: its DERP endpoint (informational; clients derive it from url).
        public_key: its DERP server key as hex ("" when unknown).
        name: a label ("" when none).
    """

    url: str
    derp_url: str = ""
    public_key: str = ""
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "derp_url": self.derp_url,
                "public_key": self.public_key}

    @classmethod
    def parse(cls, obj: Any) -> RelayNode | None:
        """A node, or None for a malformed entry."""
        if not isinstance(obj, dict):
            return None
        url = _http_url(obj.get("url"))
        if url is None:
            return None
        return cls(url, str(obj.get("derp_url") or ""), str(obj.get("public_key") or ""),
                   str(obj.get("name") or ""))


@dataclass(frozen=True)
class Region:
    """One relay region.

    Attributes:
        region_id: the id peers publish as their home (> 0 in practice).
        code: a short code ("primary").
        name: a human name.
        url: the base URL peers dial (the first node's).
        nodes: the region's relay nodes; empty means one node at ``url``.
        healthy: False while coderd's health check fails: do not home here.
    """

    region_id: int
    code: str = ""
    name: str = ""
    url: str = ""
    nodes: tuple[RelayNode, ...] = ()
    healthy: bool = True

    @property
    def node_urls(self) -> tuple[str, ...]:
        """Every node's base URL, first the region's own."""
        urls = [self.url] if self.url else []
        urls += [n.url for n in self.nodes if n.url not in urls]
        return tuple(urls)

    def to_json(self) -> dict[str, Any]:
        first = self.nodes[0] if self.nodes else RelayNode(self.url)
        return {
            "region_id": self.region_id,
            "code": self.code,
            "name": self.name,
            "url": self.url,
            "derp_url": first.derp_url or self.url.rstrip("/") + "/derp",
            "public_key": first.public_key,
            "healthy": self.healthy,
            "nodes": [n.to_json() for n in self.nodes],
        }

    @classmethod
    def parse(cls, obj: Any) -> Region | None:
        """A region, or None for a malformed entry (bad id, no http(s) URL)."""
        if not isinstance(obj, dict):
            return None
        rid = obj.get("region_id")
        if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid < 2**31:
            return None
        raw_nodes = obj.get("nodes")
        nodes = tuple(
            n for n in (RelayNode.parse(x) for x in
                        (raw_nodes[:MAX_NODES] if isinstance(raw_nodes, list) else ()))
            if n is not None
        )
        url = _http_url(obj.get("url")) or (nodes[0].url if nodes else None)
        if url is None:
            return None
        healthy = obj.get("healthy", True)
        return cls(rid, str(obj.get("code") or ""), str(obj.get("name") or ""), url, nodes,
                   healthy if isinstance(healthy, bool) else True)


@dataclass(frozen=True)
class RelayMap:
    """The regions, in coderd's order (the primary first).

    Attributes:
        regions: every well-formed region, healthy or not.
    """

    regions: tuple[Region, ...] = ()

    @classmethod
    def parse(cls, obj: Any) -> RelayMap:
        """The map from its JSON; malformed regions are skipped.

        Raises:
            MessageError: not a relay map at all (no ``regions`` list).
        """
        if not isinstance(obj, dict) or not isinstance(obj.get("regions"), list):
            raise MessageError("the relay map has no regions list")
        out: list[Region] = []
        seen: set[int] = set()
        for raw in obj["regions"][: MAX_REGIONS * 4]:
            region = Region.parse(raw)
            if region is not None and region.region_id not in seen and len(out) < MAX_REGIONS:
                seen.add(region.region_id)
                out.append(region)
        return cls(tuple(out))

    def to_json(self) -> dict[str, Any]:
        return {"regions": [r.to_json() for r in self.regions]}

    @property
    def usable(self) -> tuple[Region, ...]:
        """The healthy regions (where a peer may home)."""
        return tuple(r for r in self.regions if r.healthy)

    def region(self, region_id: int) -> Region | None:
        """The region with ``region_id``, or None."""
        return next((r for r in self.regions if r.region_id == region_id), None)

    def pick(self, wanted: int) -> Region | None:
        """``wanted`` if it is in the map, else the first usable region (else the
        first region at all; None for an empty map).  What a client uses to
        join an agent on its home region."""
        return self.region(wanted) or next(iter(self.usable or self.regions), None)

    def ids(self) -> Iterable[int]:
        return (r.region_id for r in self.regions)
