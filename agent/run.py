"""``burrow agent``: the process in a workspace that users' tunnels end at.

Theory of operation.  :meth:`Agent.run` fetches the manifest from coderd
(retrying with backoff while coderd is unreachable), then wires the peer
layer (:mod:`peer`) to its services and runs for good:

* a :class:`~peer.conn.PeerConn` with the persisted node key: it measures
  each relay region of the manifest's relay map and homes on the fastest,
  runs the tunnel endpoint over a DERP client to the home relay, listens for
  direct paths (advertised in the node), re-homes when the home relay stays
  unreachable for ``rehome_after`` seconds and, with hysteresis, when
  another region is clearly faster for a while;
* a :class:`~peer.coordclient.Coordinator`: the agent publishes its node, and
  every client node coderd forwards is a key that may open sessions
  (``set_peer``).  No other key can: the endpoint refuses handshakes from
  unknown keys.  When the WebSocket drops (coderd restarting) it is reopened
  with backoff; the keys learnt stay authorised for ``PEER_GRACE`` seconds
  after their client left, so open sessions are not cut by a control-plane
  hiccup.  ``TOKEN_REFUSALS`` refusals in a row end the agent;
* services on incoming streams: ``ssh`` (SSHServer with the persisted host
  key, the manifest's env and directory, held behind the login gate while the
  startup script runs if ``start_blocks_login``), ``tcp:<port>``
  (ServiceRouter) and any extra service the caller adds (``speedtest``);
* the startup script (lifecycle created -> starting -> ready | start_error |
  start_timeout), its output shipped in batches by the :class:`Reporter`;
  ports and stats snapshots every ``report_interval`` seconds.

Shutdown (``shutdown`` event set, e.g. on SIGTERM): shutting_down, the
shutdown script, off (or shutdown_error/timeout), the reports flushed for a
moment, then everything is cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from agent.http import CoderdClient, CoderdRefused, CoderdUnreachable
from agent.lifecycle import State, shutdown_outcome, startup_outcome
from agent.reports import Reporter
from agent.scripts import LogLine, run_script
from agent.services import ServiceRouter
from agent.ssh_adapter import SSHServer
from agent.stats import ConnStats
from derp.client import DerpClient
from derp.keys import generate_private_key
from peer import latency
from peer.conn import NoRegionError, PeerConn
from peer.coordclient import Backoff, Coordinator, CoordinatorRefused
from peer.errors import MessageError
from peer.homing import fastest
from peer.messages import Node, Peer, PeerGone, ServerMessage, Welcome, parse_node
from peer.relaymap import Region as RelayRegion
from peer.relaymap import RelayMap
from tunnel.endpoint import Endpoint
from tunnel.stream import TunnelStream

log = logging.getLogger("burrow.agent")

PEER_GRACE = 300.0
TOKEN_REFUSALS = 3  # consecutive 401/403 from the coordinator before the agent gives up
HEARTBEAT = 10.0
MAX_BACKOFF = 30.0

StreamService = Callable[[trio.abc.Stream], Awaitable[None]]


class AgentError(Exception):
    """The agent cannot run: coderd refused its token, or its data dir is unusable."""


@dataclass
class AgentOptions:
    """How ``burrow agent`` runs.

    Attributes:
        url: coderd's access URL.
        token: the agent token.
        data_dir: where the node key and SSH host key persist.
        force_websockets: reach the relay over WebSocket from the start.
        direct_address: host to listen on for direct tunnel paths ("" = none).
        startup_timeout: seconds before the startup script is killed
            (start_timeout); the manifest's ``startup_script_timeout`` wins.
        shutdown_timeout: the same for the shutdown script.
        report_interval: seconds between ports/stats reports.
        rehome_after: seconds the home relay may stay unreachable before the
            agent moves to the fastest other region that answers.
        shell: the SSH sessions' shell (default: the user's login shell).
        extra_services: stream services besides ssh and tcp:<port>.
    """

    url: str
    token: str
    data_dir: Path
    force_websockets: bool = False
    direct_address: str = "127.0.0.1"
    startup_timeout: float = 300.0
    shutdown_timeout: float = 60.0
    report_interval: float = 15.0
    rehome_after: float = 10.0
    shell: str | None = None
    extra_services: Mapping[str, StreamService] = field(default_factory=dict)


@dataclass(frozen=True)
class Region:
    """A relay region as the agent's helpers below take it (id and URL)."""

    region_id: int
    url: str


def load_or_create_node_key(path: Path) -> bytes:
    """The 32-byte node key kept (hex, 0600) at ``path``; created if absent.

    Raises:
        AgentError: the file exists but does not hold a key, or cannot be written.
    """
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        key = generate_private_key()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key.hex() + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            raise AgentError(f"cannot write {path}: {exc.strerror or exc}") from None
        return key
    except OSError as exc:
        raise AgentError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise AgentError(f"{path} does not hold a 32-byte key (64 hex digits)")
    return key


def advertised_host(bound: str, coderd_url: str) -> str:
    """The address peers should dial for a listener bound to ``bound``.

    A wildcard bind (``0.0.0.0``, ``::``) is advertised as the local address
    this host uses to reach coderd -- the interface other machines most
    likely reach it on; any other address as itself.
    """
    if bound not in ("0.0.0.0", "::", ""):
        return bound
    host = urllib.parse.urlsplit(coderd_url).hostname or "127.0.0.1"
    family = socket.AF_INET6 if bound == "::" else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))  # UDP connect: picks a route, sends nothing
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1" if family == socket.AF_INET else "::1"


def _regions(regions: tuple[RelayRegion, ...]) -> list[Region]:
    return [Region(r.region_id, r.url) for r in regions if r.healthy]


def parse_regions(relay_map: Any) -> list[Region]:
    """The usable regions of a relay map (malformed entries skipped)."""
    try:
        return _regions(RelayMap.parse(relay_map).regions)
    except MessageError:
        return []


def _as_relay_regions(regions: list[Region]) -> list[RelayRegion]:
    return [RelayRegion(r.region_id, url=r.url) for r in regions]


async def measure_regions(regions: list[Region], probes: int = 3,
                          timeout: float = 3.0) -> dict[int, float]:
    """Median latency (ms) per region whose every probe answered, probed concurrently."""
    results = await latency.measure_all(_as_relay_regions(regions), probes, timeout)
    for r in results:
        if r.error:
            log.info("relay region %d (%s) unreachable: %s", r.region.region_id, r.region.url,
                     r.error)
    return latency.latency_ms(results)


def pick_home(regions: list[Region], latency_ms: Mapping[int, float]) -> Region:
    """The region with the lowest latency; the first region if none answered.

    Raises:
        AgentError: the relay map has no regions.
    """
    if not regions:
        raise AgentError("coderd's relay map has no usable region")
    best = fastest(latency_ms, [r.region_id for r in regions])
    return next((r for r in regions if r.region_id == best), regions[0])


async def fetch_manifest(api: CoderdClient, *, max_backoff: float = MAX_BACKOFF) -> dict[str, Any]:
    """The manifest, retried with backoff while coderd is unreachable or failing (5xx).

    Raises:
        AgentError: coderd refused the token (4xx).
    """
    backoff = 0.25
    while True:
        try:
            manifest = await api.request("GET", "/workspaceagents/me/manifest")
            if isinstance(manifest, dict):
                return manifest
            log.warning("manifest is not an object; retrying")
        except CoderdUnreachable as exc:
            log.info("coderd unreachable (%s); retrying in %.1f s", exc, backoff)
        except CoderdRefused as exc:
            if exc.status < 500:
                raise AgentError(f"coderd refused the agent token: {exc}") from None
            log.info("coderd failed (%s); retrying in %.1f s", exc, backoff)
        await trio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)


class Agent:
    """One running agent (see the module docstring).

    Args:
        options: how to run.
    """

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.api = CoderdClient(options.url, options.token)
        self.shutdown = trio.Event()
        self.manifest: dict[str, Any] = {}
        self.conn: PeerConn | None = None  # made by run()
        self.endpoint: Endpoint | None = None  # conn's endpoint (tests may set their own)
        self.coordinator = Coordinator(
            self.api.websocket_url("/workspaceagents/me/coordinate"), [self.api.auth_header],
            lambda: self.conn.node() if self.conn is not None else None, self._on_message,
            heartbeat=HEARTBEAT, max_refusals=TOKEN_REFUSALS, refused_statuses={401, 403},
            backoff=Backoff(0.25, MAX_BACKOFF), on_lost=self._expire_peers)
        self.ready = self.coordinator.welcomed  # set once the node was published the first time
        self.ssh_stats = ConnStats()
        self.tcp_stats = ConnStats()
        self.reporter = Reporter(self.api, interval=options.report_interval,
                                 services={"ssh": self.ssh_stats, "tcp": self.tcp_stats},
                                 tunnel=self._tunnel_stats)
        self.login_gate = trio.Event()
        self._startup_scope = trio.CancelScope()
        self.peers: dict[str, bytes] = {}  # coordinator conn id -> client key
        self._gone_at: dict[bytes, float] = {}  # client key -> when its last conn left

    @property
    def home(self) -> RelayRegion | None:
        return None if self.conn is None else self.conn.home

    @property
    def derp(self) -> DerpClient | None:
        return None if self.conn is None else self.conn.derp

    @property
    def rehomes(self) -> int:
        return 0 if self.conn is None else self.conn.rehomes

    @property
    def coordinator_connects(self) -> int:
        return self.coordinator.connects

    # -- pieces ----------------------------------------------------------

    def _tunnel_stats(self) -> dict[str, object] | None:
        return None if self.endpoint is None else self.endpoint.stats()

    def _on_message(self, msg: ServerMessage) -> None:
        if isinstance(msg, Welcome):
            if self.conn is not None and msg.regions:
                self.conn.relay_map = msg.relay_map
            log.info("coordinator connected (relay region %s)",
                     self.home.region_id if self.home else "?")
        elif isinstance(msg, Peer):
            self._on_peer(msg.conn_id, msg.node)
        elif isinstance(msg, PeerGone):
            self._on_peer_gone(msg.conn_id)

    def _on_peer(self, conn_id: str, node: Node | Any) -> None:
        if not isinstance(node, Node):
            try:
                node = parse_node(node, strict=False)
            except MessageError:
                return
        assert self.endpoint is not None
        self.peers[conn_id] = node.key
        self._gone_at.pop(node.key, None)
        self.endpoint.set_peer(node.key, direct_endpoints=list(node.endpoints))

    def _on_peer_gone(self, conn_id: str) -> None:
        key = self.peers.pop(conn_id, None)
        if key is not None and key not in self.peers.values():
            self._gone_at[key] = time.monotonic()

    def _expire_peers(self) -> None:
        if self.endpoint is None:
            return
        now = time.monotonic()
        for key, at in list(self._gone_at.items()):
            if now - at > PEER_GRACE:
                del self._gone_at[key]
                self.endpoint.remove_peer(key)

    async def publish(self) -> None:
        """Send our node again (after it changed) if the coordinator is connected."""
        await self.coordinator.publish()

    async def coordinate(self) -> None:
        """Hold the coordinator WebSocket, reopening it with backoff, forever.

        Raises:
            AgentError: coderd kept refusing the agent token.
        """
        try:
            await self.coordinator.run()
        except CoordinatorRefused:
            # The workspace was stopped, rebuilt or deleted: this agent has no job left.
            raise AgentError("coderd no longer accepts the agent token (workspace stopped "
                             "or rebuilt?)") from None

    async def _handle(self, router: ServiceRouter, peer: bytes, service: str,
                      stream: TunnelStream) -> None:
        extra = self.options.extra_services.get(service)
        if extra is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await extra(stream)
            return
        await router.handle_tunnel_stream(peer, service, stream)

    def _allow(self, router: ServiceRouter, peer: bytes, service: str) -> bool | str:
        if service in self.options.extra_services:
            return True
        return router.allow(peer, service)

    async def startup(self) -> None:
        """Run the startup script and move the lifecycle to its outcome."""
        with self._startup_scope:
            await self._startup()

    async def _startup(self) -> None:
        m = self.manifest
        script = str(m.get("startup_script") or "")
        self.reporter.advance(State.STARTING)
        if not script.strip():
            self.reporter.advance(State.READY)
            self.login_gate.set()
            return
        timeout = m.get("startup_script_timeout")
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            timeout = self.options.startup_timeout
        result = await run_script(script, cwd=self.workdir, env=self.env, timeout=float(timeout),
                                  on_output=self.reporter.on_output)
        log.info("startup script: exit %s after %.2f s%s", result.exit_code, result.duration,
                 " (timed out)" if result.timed_out else "")
        self.reporter.advance(startup_outcome(result.exit_code, result.timed_out))
        self.login_gate.set()

    async def stop(self) -> None:
        """shutting_down, the shutdown script, then off (or its error/timeout)."""
        self._startup_scope.cancel()
        if self.reporter.lifecycle.state is State.STARTING:  # stopped mid-script
            self.reporter.add_logs("startup_script", [LogLine(time.time(), "[burrow] startup "
                                                              "script interrupted by shutdown")])
            self.reporter.advance(State.START_ERROR)
        self.login_gate.set()
        self.reporter.advance(State.SHUTTING_DOWN)
        script = str(self.manifest.get("shutdown_script") or "")
        outcome = State.OFF
        if script.strip():
            result = await run_script(script, cwd=self.workdir, env=self.env,
                                      timeout=self.options.shutdown_timeout,
                                      on_output=self.reporter.on_shutdown_output)
            outcome = shutdown_outcome(result.exit_code, result.timed_out)
        self.reporter.advance(outcome)
        await self.reporter.flushed(3.0)

    @property
    def workdir(self) -> Path:
        directory = str(self.manifest.get("directory") or "")
        path = Path(os.path.expanduser(directory)) if directory else Path.home()
        return path if path.is_dir() else Path.home()

    @property
    def env(self) -> dict[str, str]:
        env = self.manifest.get("env")
        out = {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {}
        for key, name in (("workspace_name", "BURROW_WORKSPACE_NAME"),
                          ("owner_name", "BURROW_WORKSPACE_OWNER")):
            if isinstance(self.manifest.get(key), str):
                out.setdefault(name, self.manifest[key])
        return out

    # -- the whole ------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until ``shutdown`` is set, then stop cleanly.

        Raises:
            AgentError: coderd refused the token, no relay region, bad data dir.
        """
        opts = self.options
        key = load_or_create_node_key(opts.data_dir / "node_key")
        async with trio.open_nursery() as outer:
            outer.start_soon(self.reporter.run_outbox)
            self.manifest = await fetch_manifest(self.api)
            log.info("manifest: workspace %s, agent %s", self.manifest.get("workspace_name"),
                     self.manifest.get("agent_name"))
            try:
                relay_map = RelayMap.parse(self.manifest.get("relay_map"))
            except MessageError:
                relay_map = RelayMap()
            gate = self.login_gate if self.manifest.get("start_blocks_login") else None
            try:
                ssh = SSHServer(opts.data_dir / "ssh_host_ed25519_key", shell=opts.shell,
                                env=self.env, workdir=self.workdir, stats=self.ssh_stats,
                                login_gate=gate)
            except Exception as exc:  # HostKeyError, OSError
                raise AgentError(f"cannot load the SSH host key: {exc}") from None
            router = ServiceRouter(ssh.serve_stream, tcp_stats=self.tcp_stats)
            conn = self.conn = PeerConn(
                key, force_websocket=opts.force_websockets, rehome_after=opts.rehome_after,
                allow=lambda peer, service: self._allow(router, peer, service))
            endpoint = self.endpoint = conn.endpoint
            conn.coordinator = self.coordinator
            try:
                home = await conn.choose_home(relay_map)
            except NoRegionError:
                raise AgentError("coderd's relay map has no usable region") from None
            log.info("home relay: region %d %s (%s)", home.region_id, home.url,
                     ", ".join(f"{k}: {v:.1f} ms" for k, v in conn.latency_ms.items()) or
                     "no latency measured")
            async with trio.open_nursery() as inner:
                await conn.start(inner, home)
                if opts.direct_address:
                    try:
                        await conn.listen_direct(
                            opts.direct_address, lambda h: advertised_host(h, self.api.url))
                    except OSError as exc:
                        log.warning("no direct path: %s", exc)
                inner.start_soon(endpoint.serve,
                                 lambda p, s, st: self._handle(router, p, s, st))
                inner.start_soon(self.coordinate)
                inner.start_soon(conn.rehome_when_unreachable)
                inner.start_soon(conn.reprobe)
                inner.start_soon(self.reporter.run_snapshots, self._expire_peers)
                inner.start_soon(self.startup)
                task_status.started()
                await self.shutdown.wait()
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(opts.shutdown_timeout + 10):
                        await self.stop()
                    with trio.move_on_after(1.0):
                        await endpoint.aclose()
                inner.cancel_scope.cancel()
            outer.cancel_scope.cancel()
