"""From a workspace name to tunnel streams: :func:`connect`.

Theory of operation.  ``async with connect(client, "dev") as conn`` does, in order:

1. looks the workspace up through the API and picks its agent; while the
   workspace's build is still pending or starting it waits, showing the last
   build log line on the spinner (:class:`~burrow.access.progress.Progress`);
2. opens the coordinator WebSocket as a *client* of that agent, reads
   ``welcome`` (the relay map), publishes a fresh node key, and waits for the
   agent's node (``peer``) -- an agent that has not connected yet keeps us
   waiting, up to ``timeout``;
3. connects a :class:`~derp.client.DerpClient` to the agent's home relay
   (``--force-websockets`` makes it use WebSocket from the start), runs a
   tunnel :class:`~tunnel.endpoint.Endpoint` on it, and authorises exactly
   the agent's key, with the agent's direct endpoints to try in background;
4. keeps reading the coordinator: a re-announced node (new endpoints, or a
   new key after an agent restart) updates the endpoint's peer.  A lost
   coordinator (coderd restarting) leaves the tunnel alone; we rejoin with
   backoff and publish our node again.

The tunnel key is generated per connection: the coordinator tells the agent
which client keys may reach it, so a key outlives nothing.  Leaving the
block closes the tunnel session (telling the agent), the relay connection and
the coordinator WebSocket.  Every failure a user can cause or meet
(workspace stopped, server unreachable, relay unreachable, agent refuses) is
an :class:`AccessError` with a one-line message.
"""

from __future__ import annotations

import json
import math
import random
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
from peer.errors import MessageError
from peer.messages import Node, Peer, Welcome, node_message, parse_server_message
from peer.relaymap import Region
from tunnel.derp_path import DerpPath
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
        endpoint: the tunnel endpoint (our key).
        derp: the relay client.
        region: the relay region we share with the agent.
        agent_node: the agent's node as last announced.
    """

    def __init__(self, target: Target, endpoint: Endpoint, derp: DerpClient,
                 region: Region, agent_node: Node, *,
                 rejoin_timeout: float = REJOIN_TIMEOUT) -> None:
        self.target = target
        self.endpoint = endpoint
        self.derp = derp
        self.region = region
        self.agent_node = agent_node
        self.rejoin_timeout = rejoin_timeout
        self._agent_changed = trio.Event()
        self.ws: wsclient.WebSocket | None = None  # owned by _follow
        self.coordinator_losses = 0

    @property
    def agent_key(self) -> bytes:
        return self.agent_node.key

    def set_agent(self, node: Node) -> None:
        """The coordinator re-announced the agent: follow its key and endpoints."""
        if node.key != self.agent_node.key:
            self.endpoint.remove_peer(self.agent_node.key)  # fails what waits on the old key
        self.agent_node = node
        self.endpoint.set_peer(node.key, direct_endpoints=list(node.endpoints))
        self._agent_changed.set()
        self._agent_changed = trio.Event()

    async def open_stream(self, service: str) -> TunnelStream:
        """A stream to ``service`` (``ssh``, ``tcp:<port>``, ``speedtest``) on the agent.

        When the session fails (the agent restarted, say), waits up to
        ``rejoin_timeout`` for the coordinator to announce the agent again and
        retries with its new node.

        Raises:
            AccessError: the agent refused, or could not be reached in time.
        """
        deadline = trio.current_time() + self.rejoin_timeout
        while True:
            key, changed = self.agent_key, self._agent_changed
            try:
                stream = await self._open_unless_changed(key, service, changed)
            except StreamRefusedError as exc:
                raise AccessError(f"{self.target.workspace}: {service}: {exc}") from None
            except TunnelError as exc:
                if self.agent_key != key:
                    continue
                with trio.move_on_at(deadline):
                    await changed.wait()
                if self.agent_key == key:
                    raise AccessError(f"{self.target.workspace}: {service}: {exc}") from None
                continue
            if stream is not None:
                return stream

    async def _open_unless_changed(
        self, key: bytes, service: str, changed: trio.Event
    ) -> TunnelStream | None:
        """Open on ``key``; None if the agent was re-announced meanwhile (the
        old key may never answer: its handshake would only time out)."""
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


async def _open_coordinator(
    nursery: trio.Nursery, client: Client, target: Target
) -> wsclient.WebSocket:
    headers = [(SESSION_HEADER.encode(), (client.token or "").encode())]
    url = _coordinate_url(client, target.agent_id)
    try:
        with trio.fail_after(client.timeout):
            return await wsclient.connect(url, extra_headers=headers,
                                          max_message_size=1 << 20)
    except wsclient.ConnectionRejected as exc:
        message = f"HTTP {exc.status_code}"
        try:
            body = json.loads(exc.body or b"{}")
            if isinstance(body, dict) and isinstance(body.get("message"), str):
                message = body["message"]
        except ValueError:
            pass
        raise AccessError(f"coordinator refused: {message}") from None
    except (wsclient.HandshakeError, OSError, ValueError) as exc:
        raise AccessError(f"cannot reach the coordinator at {client.url}: {exc}") from None
    except trio.TooSlowError:
        raise AccessError(f"the coordinator at {client.url} did not answer in time") from None


def _pick_region(regions: tuple[Region, ...], wanted: int) -> Region:
    for r in regions:
        if r.region_id == wanted:
            return r
    if not regions:
        raise AccessError("the server's relay map has no regions")
    return regions[0]


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
    key = generate_private_key()
    endpoint = Endpoint(key)
    try:
        async with trio.open_nursery() as nursery:
            ws = await _open_coordinator(nursery, client, target)
            try:
                conn = await _join(nursery, client, ws, target, key, endpoint,
                                   force_websocket, deadline, progress)
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
                    await endpoint.aclose()
                    await (conn.ws or ws).aclose()
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
    key: bytes,
    endpoint: Endpoint,
    force_websocket: bool,
    deadline: float,
    progress: Progress,
) -> WorkspaceConnection:
    regions: tuple[Region, ...] = ()
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
                regions = msg.regions
                region = _pick_region(regions, 0)
                await ws.send_message(node_message(endpoint.public_key, region.region_id))
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
    region = _pick_region(regions, agent_node.home_region)
    if region.region_id != published:
        await ws.send_message(node_message(endpoint.public_key, region.region_id))
    derp = DerpClient(region.url, key, force_websocket=force_websocket)
    try:
        with trio.fail_after(RELAY_DIAL_TIMEOUT):
            await nursery.start(derp.run)
    except trio.TooSlowError:
        raise AccessError(f"cannot reach the relay {region.url}") from None
    endpoint.add_relay(DerpPath(derp))
    await nursery.start(endpoint.run)
    conn = WorkspaceConnection(target, endpoint, derp, region, agent_node)
    endpoint.set_peer(agent_node.key, direct_endpoints=list(agent_node.endpoints))
    conn.ws = ws
    nursery.start_soon(_follow, nursery, client, ws, conn)
    return conn


async def _follow(
    nursery: trio.Nursery,
    client: Client,
    ws: wsclient.WebSocket,
    conn: WorkspaceConnection,
) -> None:
    """Apply the agent's re-announcements.  When the coordinator goes away (coderd
    restarting), the tunnel carries on and we rejoin with backoff, publishing our
    node again -- an agent that reconnects learns its allowed clients only from
    clients present on the coordinator."""
    while True:
        try:
            while True:
                msg = await _next_message(ws)
                if isinstance(msg, Peer):
                    conn.set_agent(msg.node)
        except AccessError:
            conn.coordinator_losses += 1
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await ws.aclose()
        ws = await _rejoin(nursery, client, conn)


async def _rejoin(
    nursery: trio.Nursery, client: Client, conn: WorkspaceConnection
) -> wsclient.WebSocket:
    delay = REJOIN_MIN_DELAY
    while True:
        await trio.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, REJOIN_MAX_DELAY)
        try:
            ws = await _open_coordinator(nursery, client, conn.target)
        except AccessError:
            continue
        try:
            await ws.send_message(node_message(conn.endpoint.public_key, conn.region.region_id))
        except wsclient.ConnectionClosed:
            continue
        conn.ws = ws
        return ws


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
