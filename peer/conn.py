"""The connection assembly: one tunnel peer's presence on the network.

Theory of operation.  A :class:`PeerConn` holds, for one node key, what the
agent and the CLI both need to reach and be reached:

* a tunnel :class:`~tunnel.endpoint.Endpoint` (the sessions and streams);
* a :class:`~derp.client.DerpClient` to the *home* region's relay, the
  endpoint's default path.  :meth:`PeerConn.switch_home` starts a client to
  another region, makes it the default path (open sessions move to it; the
  tunnel retransmits what was lost on the way) and only then cancels the
  old one, then publishes the new node;
* optionally a direct TCP listener (:meth:`PeerConn.listen_direct`), whose
  address the node advertises so a peer can replace the relay path;
* a :class:`~peer.coordclient.Coordinator` (attached by the caller, who
  knows the URL and credentials) that publishes :meth:`PeerConn.node`;
* the home choice: :meth:`PeerConn.choose_home` measures every usable region
  of the relay map once (:mod:`peer.latency`) and homes on the fastest;
  :meth:`PeerConn.reprobe` re-measures now and then and moves only on a
  clear, lasting win (:mod:`peer.homing`'s hysteresis);
  :meth:`PeerConn.rehome_when_unreachable` moves at once to the fastest
  other region that answers once the home relay stayed down for
  ``rehome_after`` seconds (the DerpClient redials home meanwhile).

Every relay client runs in the nursery given to :meth:`PeerConn.start`;
cancelling it ends them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from derp.client import DerpClient
from peer import latency
from peer.coordclient import Coordinator
from peer.homing import HomeChooser, Hysteresis
from peer.messages import Node
from peer.relaymap import Region, RelayMap
from tunnel.derp_path import DerpPath
from tunnel.endpoint import Allow, Endpoint

log = logging.getLogger("burrow.peer")

REHOME_CHECK = 1.0  # seconds between looks at the home relay connection
REPROBE_EVERY = 60.0


class NoRegionError(Exception):
    """The relay map has no usable region to home on."""


class PeerConn:
    """A tunnel endpoint homed on one relay region (see the module docstring).

    Args:
        key: our node's private key.
        force_websocket: reach relays over WebSocket from the start.
        allow: the endpoint's service gate (who may open which service).
        rehome_after: seconds the home relay may stay unreachable before moving.
        policy: the hysteresis for moving to a faster region.

    Attributes:
        endpoint: the tunnel endpoint.
        relay_map: the latest relay map (update it when coderd sends one).
        home: the home region (None before :meth:`start`).
        derp: the home relay's client.
        latency_ms: the latest median latency per region that answered.
        direct: our advertised direct address, if listening.
        rehomes: how many times the home changed after :meth:`start`.
        coordinator: where our node is published (attached by the caller).
    """

    def __init__(self, key: bytes, *, force_websocket: bool = False, allow: Allow | None = None,
                 rehome_after: float = 10.0, policy: Hysteresis | None = None) -> None:
        self.key = key
        self.force_websocket = force_websocket
        self.rehome_after = rehome_after
        self.endpoint = Endpoint(key, allow=allow)
        self.relay_map = RelayMap()
        self.chooser = HomeChooser(policy)
        self.home: Region | None = None
        self.derp: DerpClient | None = None
        self.latency_ms: dict[int, float] = {}
        self.direct: tuple[str, int] | None = None
        self.rehomes = 0
        self.coordinator: Coordinator | None = None
        self._nursery: trio.Nursery | None = None
        self._derp_scope: trio.CancelScope | None = None

    @property
    def public_key(self) -> bytes:
        return self.endpoint.public_key

    def node(self) -> Node | None:
        """Our node as it should be published (None before a home is chosen)."""
        if self.home is None:
            return None
        return Node(self.public_key, self.home.region_id,
                    (self.direct,) if self.direct is not None else (),
                    {str(k): v for k, v in self.latency_ms.items()})

    async def measure(self, regions: tuple[Region, ...] | list[Region], *, probes: int = 3,
                      timeout: float = 3.0) -> dict[int, float]:
        """Probe ``regions`` concurrently; median ms of those that answered
        (merged into :attr:`latency_ms`)."""
        results = await latency.measure_all(list(regions), probes, timeout)
        for r in results:
            if r.error:
                log.info("relay region %d (%s) unreachable: %s", r.region.region_id,
                         r.region.url, r.error)
        got = latency.latency_ms(results)
        self.latency_ms.update(got)
        for r in results:
            if r.error:
                self.latency_ms.pop(r.region.region_id, None)
        return got

    async def choose_home(self, relay_map: RelayMap, *, probes: int = 3,
                          timeout: float = 3.0) -> Region:
        """Measure the usable regions and pick the fastest (the first if none answered).

        Raises:
            NoRegionError: the map has no usable region.
        """
        self.relay_map = relay_map
        usable = relay_map.usable
        if not usable:
            raise NoRegionError("the relay map has no usable region")
        got = await self.measure(usable, probes=probes, timeout=timeout)
        self.chooser.home = None
        chosen = self.chooser.observe(got, [r.region_id for r in usable])
        region = relay_map.region(chosen) if chosen is not None else None
        return region or usable[0]

    async def start(self, nursery: trio.Nursery, home: Region, *,
                    wait_connected: bool = False) -> None:
        """Home on ``home`` and run the endpoint, both in ``nursery``.

        ``wait_connected`` returns only once the relay handshake is done (bound
        it with a timeout to report an unreachable relay).
        """
        self._nursery = nursery
        self.chooser.home = home.region_id
        await self._connect(home, wait_connected=wait_connected)
        await nursery.start(self.endpoint.run)

    async def _run_derp(self, client: DerpClient, wait_connected: bool,
                        task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            if wait_connected:
                async with trio.open_nursery() as inner:
                    await inner.start(client.run)
                    task_status.started(scope)
            else:
                task_status.started(scope)
                await client.run()

    async def _connect(self, region: Region, *, wait_connected: bool = False) -> None:
        assert self._nursery is not None
        old_scope = self._derp_scope
        client = DerpClient(region.url, self.key, force_websocket=self.force_websocket)
        self._derp_scope = await self._nursery.start(self._run_derp, client, wait_connected)
        self.derp, self.home = client, region
        self.endpoint.add_relay(DerpPath(client))
        if old_scope is not None:
            old_scope.cancel()

    async def switch_home(self, region: Region) -> None:
        """Home on ``region``: a new relay client becomes the default path (sessions
        move to it), the old one is closed, the new node is published."""
        old = self.home
        await self._connect(region)
        self.chooser.home = region.region_id
        self.rehomes += 1
        log.info("re-homed from region %s to region %d (%s)",
                 old.region_id if old else "?", region.region_id, region.url)
        if self.coordinator is not None:
            await self.coordinator.publish()

    async def listen_direct(self, host: str, advertise: Callable[[str], str]) -> None:
        """Accept direct tunnel connections on ``host`` (any port) and advertise
        ``advertise(bound host)`` in our node.

        Raises:
            OSError: cannot listen there.
        """
        bound, port = await self.endpoint.listen_direct(host, 0)
        self.direct = (advertise(bound), port)

    async def rehome_when_unreachable(self, *, check: float = REHOME_CHECK) -> None:
        """Move to the fastest other region once the home relay stayed down for
        ``rehome_after`` seconds; stay (the relay client redials) when none answers."""
        down_since: float | None = None
        while True:
            await trio.sleep(check)
            if self.derp is None or self.derp.connected:
                down_since = None
                continue
            now = trio.current_time()
            if down_since is None:
                down_since = now
            if now - down_since < self.rehome_after:
                continue
            others = [r for r in self.relay_map.usable if r != self.home]
            got = await self.measure(others, probes=1, timeout=2.0) if others else {}
            chosen = self.chooser.unreachable(got, [r.region_id for r in others])
            region = self.relay_map.region(chosen) if chosen is not None else None
            if region is not None:
                await self.switch_home(region)
                down_since = None

    async def reprobe(self, *, every: float = REPROBE_EVERY) -> None:
        """Re-measure every usable region each ``every`` seconds; move home only
        when the hysteresis says so (or the home left the map)."""
        while True:
            await trio.sleep(every)
            usable = self.relay_map.usable
            if not usable or self.derp is None or not self.derp.connected:
                continue  # rehome_when_unreachable handles a dead home
            got = await self.measure(usable)
            chosen = self.chooser.observe(got, [r.region_id for r in usable])
            region = self.relay_map.region(chosen) if chosen is not None else None
            if region is not None and region != self.home:
                await self.switch_home(region)

    async def aclose(self) -> None:
        """Close the endpoint's sessions (telling peers); relay clients end with
        the nursery."""
        await self.endpoint.aclose()
