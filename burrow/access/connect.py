"""From a workspace name to tunnel streams: :func:`connect`.

Theory of operation.  ``async with connect(client, "dev") as conn`` does, in order:

1. looks the workspace up through the API and picks its agent; while the
   workspace's build is still pending or starting it waits, showing the last
   build log line on the spinner (:class:`~burrow.access.progress.Progress`);
2. opens the coordinator WebSocket as a *client* of that agent, reads
   ``welcome`` (the relay map), publishes a fresh node key, and waits for the
   agent's node (``peer``) -- an agent that has not connected yet keeps us
   waiting, up to ``timeout``;
3. starts a :class:`~peer.conn.PeerConn` homed on the agent's home relay
   (``--force-websockets`` makes it use WebSocket from the start): the
   tunnel endpoint over a DERP client, authorising exactly the agent's key,
   with the agent's direct endpoints to try in background;
4. hands the coordinator WebSocket to a :class:`~peer.coordclient.Coordinator`:
   a re-announced node (new endpoints, or a new key after an agent restart)
   updates the endpoint's peer -- the same node again disturbs nothing.  A
   lost coordinator (coderd restarting) leaves the tunnel alone; it rejoins
   with jittered backoff and publishes our node again.

The tunnel key is generated per connection: the coordinator tells the agent
which client keys may reach it, so a key outlives nothing.  Leaving the
block closes the tunnel session (telling the agent), the relay connection and
the coordinator WebSocket.  Every failure a user can cause or meet
(workspace stopped, server unreachable, relay unreachable, agent refuses) is
an :class:`AccessError` with a one-line message.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from burrow.access.progress import Progress
from burrow.api_client import SESSION_HEADER, ApiError, Client, ConnectError
from derp.client import DerpClient
from derp.keys import generate_private_key
from peer import wsclient
from peer.conn import PeerConn
from peer.coordclient import (
    Backoff,
    Coordinator,
    CoordinatorRefused,
    CoordinatorUnavailable,
    dial,
)
from peer.errors import MessageError
from peer.messages import Node, Peer, ServerMessage, Welcome, node_message, parse_server_message
from peer.relaymap import Region, RelayMap
from tunnel.endpoint import Endpoint
from tunnel.errors import StreamRefusedError, TunnelError
from tunnel.stream import TunnelStream

DEFAULT_TIMEOUT = 120.0
RELAY_DIAL_TIMEOUT = 15.0
POLL_INTERVAL = 1.0
# How long a failed stream open waits for the agent to be announced again.
REJOIN_TIMEOUT = 30.0
# While waiting for the agent, how often its state is looked up for the spinner.
STATE_INTERVAL = 3.0
# Backoff bounds for rejoining a lost coordinator, seconds.
REJOIN_MIN_DELAY = 0.5
REJOIN_MAX_DELAY = 10.0


class AccessError(Exception):
    """The workspace cannot be reached; the message is one line for the user."""


@dataclass(frozen=True)
class Target:
    """The agent a connection goes to."""

    workspace: str
    workspace_id: str
    agent_id: str
    agent_name: str
    lifecycle: str = ""  # the agent's lifecycle state when looked up (may be "")
    status: str = ""  # connected / disconnected / ... as coderd sees it


def lifecycle_warning(target: Target) -> str | None:
    """A line to show when the agent's startup did not go well, else None."""
    if target.lifecycle in ("start_error", "start_timeout"):
        what = "failed" if target.lifecycle == "start_error" else "timed out"
        return (f"burrow: warning: the startup script of {target.workspace} {what}"
                f" ({target.lifecycle}); the workspace may not be fully set up"
                f" (`burrow show {target.workspace}`)")
    return None


async def find_agent(
    client: Client,
    workspace: str,
    *,
    agent: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None,
) -> Target:
    """The agent of ``workspace``, waiting while its build is pending or starting.

    Raises:
        AccessError: no such workspace or agent, it is stopped/failed, or the
            build did not finish within ``timeout``.
    """
    progress = progress or Progress(quiet=True)
    deadline = trio.current_time() + timeout
    log_after = 0
    last_line = ""
    while True:
        try:
            ws = await client.workspace(workspace)
        except ApiError as exc:
            raise AccessError(f"workspace {workspace!r}: {exc}") from None
        except ConnectError as exc:
            raise AccessError(str(exc)) from None
        name, status, build = ws["name"], ws["status"], ws.get("latest_build") or {}
        if status == "running":
            agents = build.get("agents") or []
            if agent is not None:
                agents = [a for a in agents if a.get("name") == agent]
            if not agents:
                which = f"agent named {agent!r}" if agent else "agent"
                raise AccessError(f"workspace {name} has no {which}")
            if len(agents) > 1 and agent is None:
                names = ", ".join(str(a.get("name")) for a in agents)
                raise AccessError(f"workspace {name} has several agents ({names}): pick one")
            a = agents[0]
            return Target(name, ws["id"], str(a["id"]), str(a.get("name", "")),
                          str(a.get("lifecycle_state") or ""), str(a.get("status") or ""))
        if status not in ("pending", "starting"):
            hint = f"; start it with `burrow start {name}`" if status == "stopped" else ""
            raise AccessError(f"workspace {name} is {status}{hint}")
        if trio.current_time() >= deadline:
            raise AccessError(f"workspace {name} is still {status} after {timeout:g} s")
        build_id = build.get("id")
        if build_id:
            try:
                logs = await client.build_logs(str(build_id), after=log_after)
                for line in logs.get("logs", []):
                    log_after = max(log_after, int(line["id"]))
                    last_line = str(line.get("output", ""))
            except (ApiError, ConnectError):
                pass
        progress.update(f"workspace {name} is {status}...", last_line)
        await trio.sleep(POLL_INTERVAL)


class WorkspaceConnection:
    """A live tunnel to one workspace agent (made by :func:`connect`).

    Attributes:
        target: which workspace and agent.
        peer: our side of the network (endpoint, relay client, coordinator).
        agent_node: the agent's node as last announced.
    """

    def __init__(self, target: Target, peer: PeerConn, agent_node: Node, *,
                 rejoin_timeout: float = REJOIN_TIMEOUT) -> None:
        self.target = target
        self.peer = peer
        self.agent_node = agent_node
        self.rejoin_timeout = rejoin_timeout
        # Set (and replaced) when the agent's *key* changes: an open on the old
        # key is abandoned, its handshake would only time out.
        self._agent_changed = trio.Event()
        # Set (and replaced) on every announcement of the agent, same key or
        # not: a failed open waits for one before trying again.
        self._agent_announced = trio.Event()

    @property
    def endpoint(self) -> Endpoint:
        return self.peer.endpoint

    @property
    def derp(self) -> DerpClient:
        assert self.peer.derp is not None
        return self.peer.derp

    @property
    def region(self) -> Region:
        assert self.peer.home is not None
        return self.peer.home

    @property
    def coordinator_losses(self) -> int:
        return 0 if self.peer.coordinator is None else self.peer.coordinator.losses

    @property
    def agent_key(self) -> bytes:
        return self.agent_node.key

    def set_agent(self, node: Node) -> None:
        """The coordinator (re-)announced the agent: follow its key and endpoints.

        coderd re-announces every node periodically and whenever a peer says
        hello, so the same node arrives again and again: that must not
        disturb a stream being opened, only a new key does.
        """
        if node.key != self.agent_node.key:
            self.endpoint.remove_peer(self.agent_node.key)  # fails what waits on the old key
            self._agent_changed.set()
            self._agent_changed = trio.Event()
        self.agent_node = node
        self.endpoint.set_peer(node.key, direct_endpoints=list(node.endpoints))
        self._agent_announced.set()
        self._agent_announced = trio.Event()

    def _on_message(self, msg: ServerMessage) -> None:
        if isinstance(msg, Peer):
            self.set_agent(msg.node)
        elif isinstance(msg, Welcome) and msg.regions:
            self.peer.relay_map = msg.relay_map

    async def open_stream(self, service: str) -> TunnelStream:
        """A stream to ``service`` (``ssh``, ``tcp:<port>``, ``speedtest``) on the agent.

        When the session fails (the agent restarted, say), waits up to
        ``rejoin_timeout`` for the coordinator to announce the agent again and
        retries with its (possibly new) node.

        Raises:
            AccessError: the agent refused, or could not be reached in time.
        """
        deadline = trio.current_time() + self.rejoin_timeout
        while True:
            key, changed, announced = self.agent_key, self._agent_changed, self._agent_announced
            try:
                stream = await self._open_unless_changed(key, service, changed)
            except StreamRefusedError as exc:
                raise AccessError(f"{self.target.workspace}: {service}: {exc}") from None
            except TunnelError as exc:
                if self.agent_key != key:
                    continue
                with trio.move_on_at(deadline):
                    await announced.wait()
                if not announced.is_set():
                    raise AccessError(f"{self.target.workspace}: {service}: {exc}") from None
                continue
            if stream is not None:
                return stream

    async def _open_unless_changed(
        self, key: bytes, service: str, changed: trio.Event
    ) -> TunnelStream | None:
        """Open on ``key``; None if the agent's key changed meanwhile (the old
        key may never answer: its handshake would only time out)."""
        result: list[TunnelStream] = []
        error: list[TunnelError] = []
        async with trio.open_nursery() as nursery:

            async def opener() -> None:
                try:
                    result.append(await self.endpoint.open_stream(key, service))
                except TunnelError as exc:
                    error.append(exc)
                nursery.cancel_scope.cancel()

            async def watcher() -> None:
                await changed.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(opener)
            nursery.start_soon(watcher)
        if error:
            raise error[0]
        if result:
            return result[0]
        if self.agent_key != key:
            self.endpoint.remove_peer(key)  # end the abandoned handshake
        return None

    async def ping(self, timeout: float = 5.0) -> float:
        """Tunnel round-trip time in seconds.  Raises AccessError on timeout."""
        try:
            return await self.endpoint.ping(self.agent_key, timeout)
        except TunnelError as exc:
            raise AccessError(f"{self.target.workspace}: ping: {exc}") from None

    def path(self) -> str:
        """``relay``, ``direct`` or ``none``."""
        return self.endpoint.path_of(self.agent_key)


def unwrap(exc: BaseException) -> BaseException:
    """The only exception inside (nested) single-member groups, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _coordinate_url(client: Client, agent_id: str) -> str:
    base = client.url
    scheme = "wss://" if base.startswith("https://") else "ws://"
    return scheme + base.split("://", 1)[1] + f"/api/v2/workspaceagents/{agent_id}/coordinate"


def _coordinate_headers(client: Client) -> list[tuple[bytes, bytes]]:
    return [(SESSION_HEADER.encode(), (client.token or "").encode())]


async def _next_message(ws: wsclient.WebSocket) -> Welcome | Peer | None:
    try:
        text = await ws.get_message()
    except wsclient.ConnectionClosed as exc:
        raise AccessError(
            f"the coordinator closed the connection: {exc.reason or 'closed'}") from None
    try:
        msg = parse_server_message(text)
    except MessageError as exc:
        raise AccessError(str(exc)) from None
    return msg if isinstance(msg, Welcome | Peer) else None


async def _open_coordinator(client: Client, target: Target) -> wsclient.WebSocket:
    try:
        return await dial(_coordinate_url(client, target.agent_id), _coordinate_headers(client),
                          timeout=client.timeout)
    except CoordinatorRefused as exc:
        raise AccessError(f"coordinator refused: {exc.message}") from None
    except CoordinatorUnavailable as exc:
        raise AccessError(str(exc)) from None


def _pick_region(relay_map: RelayMap, wanted: int) -> Region:
    region = relay_map.pick(wanted)
    if region is None:
        raise AccessError("the server's relay map has no regions")
    return region


@asynccontextmanager
async def connect(
    client: Client,
    workspace: str,
    *,
    agent: str | None = None,
    force_websocket: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None,
) -> AsyncIterator[WorkspaceConnection]:
    """A tunnel to ``workspace``'s agent, alive for the ``async with`` block.

    Args:
        client: an authenticated API client.
        workspace: name, ``owner.name`` or id.
        agent: the agent's name when the workspace has several.
        force_websocket: reach the relay over WebSocket only.
        timeout: seconds to wait for the build and for the agent to connect.
        progress: where to show waiting (quiet if None).

    Raises:
        AccessError: anything that stops us from reaching the agent.
    """
    progress = progress or Progress(quiet=True)
    deadline = trio.current_time() + timeout
    target = await find_agent(client, workspace, agent=agent, timeout=timeout,
                              progress=progress)
    peer = PeerConn(generate_private_key(), force_websocket=force_websocket)
    try:
        async with trio.open_nursery() as nursery:
            ws = await _open_coordinator(client, target)
            try:
                conn = await _join(nursery, client, ws, target, peer, deadline, progress)
            except BaseException:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
                raise
            finally:
                progress.done()
            try:
                yield conn
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await peer.aclose()
                    if peer.coordinator is not None:
                        await peer.coordinator.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Our nursery wraps whatever the caller's block raised (strict
        # exception groups): hand back the single error itself.
        leaf = unwrap(group)
        if leaf is group:
            raise
        raise leaf from None


class _AgentWatch:
    """While waiting for the agent: its status and lifecycle, and the tail of its
    startup log (``GET /workspaceagents/{id}/logs``), for the spinner (every
    lookup failure just shows less)."""

    def __init__(self, client: Client, target: Target) -> None:
        self.client = client
        self.target = target
        self.state = ""
        self.log_tail = ""
        self._log_after = 0
        self._logs_supported = True

    async def refresh(self) -> None:
        try:
            ws = await self.client.workspace(self.target.workspace_id)
        except (ApiError, ConnectError):
            return
        for a in (ws.get("latest_build") or {}).get("agents") or []:
            if a.get("id") == self.target.agent_id:
                parts = [str(a[k]) for k in ("status", "lifecycle_state") if a.get(k)]
                self.state = f" (agent: {', '.join(parts)})" if parts else ""
        if not self._logs_supported:
            return
        try:
            out = await self.client.request(
                "GET", f"/workspaceagents/{self.target.agent_id}/logs",
                query={"after": str(self._log_after)},
            )
        except ApiError:
            self._logs_supported = False  # a server without agent logs
            return
        except ConnectError:
            return
        lines = out.get("logs") if isinstance(out, dict) else None
        for line in lines if isinstance(lines, list) else []:
            if isinstance(line, dict) and isinstance(line.get("id"), int):
                self._log_after = max(self._log_after, line["id"])
                self.log_tail = str(line.get("text", line.get("output", "")))[:200]


async def _join(
    nursery: trio.Nursery,
    client: Client,
    ws: wsclient.WebSocket,
    target: Target,
    peer: PeerConn,
    deadline: float,
    progress: Progress,
) -> WorkspaceConnection:
    relay_map = RelayMap()
    agent_node: Node | None = None
    published = -1
    started = trio.current_time()
    watch, watched_at = _AgentWatch(client, target), -math.inf
    with trio.move_on_at(deadline) as scope:
        while agent_node is None:
            msg: Welcome | Peer | None = None
            with trio.move_on_after(POLL_INTERVAL):
                msg = await _next_message(ws)
            # (sends happen outside the timeout: a cancelled send could cut a frame)
            if isinstance(msg, Welcome):
                relay_map = msg.relay_map
                region = _pick_region(relay_map, 0)
                await ws.send_message(node_message(peer.public_key, region.region_id))
                published = region.region_id
            elif isinstance(msg, Peer):
                agent_node = msg.node
            now = trio.current_time()
            if agent_node is None and now - started >= POLL_INTERVAL:
                if now - watched_at >= STATE_INTERVAL:
                    await watch.refresh()
                    watched_at = now
                progress.update(
                    f"waiting for agent {target.agent_name} of {target.workspace} to connect"
                    f"{watch.state}...",
                    watch.log_tail,
                )
    if scope.cancelled_caught or agent_node is None:
        raise AccessError(
            f"the agent of workspace {target.workspace} did not connect in time"
            " (is it running? `burrow show` tells when it last connected)"
        )
    # We home where the agent is: one relay hop, no mesh between us.
    region = _pick_region(relay_map, agent_node.home_region)
    if region.region_id != published:
        await ws.send_message(node_message(peer.public_key, region.region_id))
    peer.relay_map = relay_map
    try:
        with trio.fail_after(RELAY_DIAL_TIMEOUT):
            await peer.start(nursery, region, wait_connected=True)
    except trio.TooSlowError:
        raise AccessError(f"cannot reach the relay {region.url}") from None
    conn = WorkspaceConnection(target, peer, agent_node)
    peer.endpoint.set_peer(agent_node.key, direct_endpoints=list(agent_node.endpoints))
    # From here the coordinator client follows the agent's re-announcements.  When
    # the coordinator goes away (coderd restarting) the tunnel carries on and it
    # rejoins with backoff, publishing our node again -- an agent that reconnects
    # learns its allowed clients only from clients present on the coordinator.
    peer.coordinator = Coordinator(
        _coordinate_url(client, target.agent_id), _coordinate_headers(client), peer.node,
        conn._on_message, backoff=Backoff(REJOIN_MIN_DELAY, REJOIN_MAX_DELAY),
        connect_timeout=client.timeout)
    nursery.start_soon(peer.coordinator.run, ws)
    return conn


def describe(conn: WorkspaceConnection) -> dict[str, Any]:
    """What ``burrow ping`` prints about the path."""
    return {
        "path": conn.path(),
        "region": conn.region.code or str(conn.region.region_id),
        "region_name": conn.region.name,
        "transport": conn.derp.transport or "",
    }


@asynccontextmanager
async def workspace_stream(
    client: Client, workspace: str, service: str, **kwargs: Any
) -> AsyncIterator[TunnelStream]:
    """One stream to ``service`` in ``workspace``, with its tunnel alive for the block.

    ``kwargs`` are :func:`connect`'s (agent, force_websocket, timeout, progress).

    Raises:
        AccessError: the workspace or service cannot be reached.
    """
    async with connect(client, workspace, **kwargs) as conn:
        stream = await conn.open_stream(service)
        async with stream:
            yield stream
