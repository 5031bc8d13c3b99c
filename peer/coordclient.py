"""The coordinator client: one WebSocket to coderd's coordinator, held with backoff.

Theory of operation.  :meth:`Coordinator.run` loops for good:

1. dial the coordinator (:func:`dial`: the WebSocket upgrade with the
   caller's auth header) -- or take the connection the caller already
   opened and read the welcome of (``first``);
2. read ``welcome`` and hand it to ``on_message``, then send our node
   (``node()``, the caller's current one) -- the other side learns of us only
   from what is on the coordinator, so every new connection publishes again;
3. hand every ``peer`` / ``peer_gone`` to ``on_message`` while a heartbeat
   pings every ``heartbeat`` seconds (a coordinator that stops answering is
   a lost one, even if TCP never says so).  A malformed message is logged
   and skipped; an ``error`` message is logged and coderd closes next;
4. on any loss, wait with jittered exponential backoff (:class:`Backoff`,
   reset after a connection that lasted ``stable_after`` seconds) and go to
   1.  A refusal (HTTP 401/403/404/410: the token or the agent is no longer
   valid) counts; ``max_refusals`` consecutive ones end ``run`` with
   :class:`CoordinatorRefused`.  Any other failure retries forever: the
   control plane's trouble never ends a peer (its sessions keep running).

:meth:`Coordinator.publish` sends ``node()`` again at once when connected
(the home region or endpoints changed); when not, the next connection does.
``on_message`` is called on the loop's task and must not block.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import ssl
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import NoReturn

import trio

from peer import wsclient
from peer.errors import MessageError
from peer.messages import Node, NodeMessage, ServerMessage, Welcome, parse_server_message

log = logging.getLogger("burrow.peer.coordinator")

REFUSED_STATUSES = frozenset({401, 403, 404, 410})
MAX_SERVER_MESSAGE = 1 << 20


class CoordinatorUnavailable(Exception):
    """The coordinator cannot be reached or closed the connection (one line)."""


class CoordinatorRefused(CoordinatorUnavailable):
    """The coordinator answered the upgrade with an HTTP error.

    Attributes:
        status: the HTTP status.
        message: coderd's error message (or ``HTTP <status>``).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def dial(url: str, headers: Sequence[tuple[bytes, bytes]], *, timeout: float = 15.0,
               ssl_context: ssl.SSLContext | None = None) -> wsclient.WebSocket:
    """Open the coordinator WebSocket at ``url`` (``ws://`` or ``wss://``).

    Raises:
        CoordinatorRefused: an HTTP error answer (the message is coderd's).
        CoordinatorUnavailable: unreachable, a failed upgrade, or too slow.
    """
    base = url.split("/api/", 1)[0]
    try:
        with trio.fail_after(timeout):
            return await wsclient.connect(url, extra_headers=list(headers),
                                          max_message_size=MAX_SERVER_MESSAGE,
                                          ssl_context=ssl_context)
    except wsclient.ConnectionRejected as exc:
        message = f"HTTP {exc.status_code}"
        try:
            body = json.loads(exc.body or b"{}")
            if isinstance(body, dict) and isinstance(body.get("message"), str):
                message = body["message"][:300]
        except ValueError:
            pass
        raise CoordinatorRefused(exc.status_code, message) from None
    except (wsclient.HandshakeError, OSError, ValueError) as exc:
        raise CoordinatorUnavailable(f"cannot reach the coordinator at {base}: {exc}") from None
    except trio.TooSlowError:
        raise CoordinatorUnavailable(
            f"the coordinator at {base} did not answer in time") from None


@dataclass
class Backoff:
    """Exponential delays with jitter (sans-IO): ``next()`` is the wait before the
    next attempt, uniformly within [delay/2, delay], doubling up to ``maximum``."""

    minimum: float = 0.25
    maximum: float = 30.0
    _delay: float = 0.0

    def next(self) -> float:
        self._delay = min(self._delay * 2, self.maximum) if self._delay else self.minimum
        return self._delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._delay = 0.0


class Coordinator:
    """The coordinator connection of one peer (see the module docstring).

    Args:
        url: the coordinate WebSocket URL.
        headers: the auth header(s) to send with the upgrade.
        node: returns our current node (None: nothing to publish yet).
        on_message: gets each Welcome, Peer and PeerGone.
        heartbeat: seconds between pings (a pong must come within as long).
        max_refusals: consecutive refusals that end :meth:`run` (None: never).
        refused_statuses: the HTTP statuses that count as a refusal.
        backoff: reconnection delays.
        stable_after: a connection that lasted this long resets the backoff.
        on_lost: called after each lost connection (before the backoff wait).

    Attributes:
        connects: connections that got to publishing our node.
        losses: connections lost after that.
        welcomed: set once our node was first published.
    """

    def __init__(self, url: str, headers: Sequence[tuple[bytes, bytes]],
                 node: Callable[[], Node | None],
                 on_message: Callable[[ServerMessage], None], *,
                 heartbeat: float = 10.0, max_refusals: int | None = None,
                 refused_statuses: Collection[int] = REFUSED_STATUSES,
                 backoff: Backoff | None = None, stable_after: float = 10.0,
                 connect_timeout: float = 15.0, ssl_context: ssl.SSLContext | None = None,
                 on_lost: Callable[[], None] | None = None) -> None:
        self.url = url
        self.headers = list(headers)
        self.node = node
        self.on_message = on_message
        self.heartbeat = heartbeat
        self.max_refusals = max_refusals
        self.refused_statuses = frozenset(refused_statuses)
        self.backoff = backoff or Backoff()
        self.stable_after = stable_after
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.on_lost = on_lost
        self.connects = 0
        self.losses = 0
        self.welcomed = trio.Event()
        self._ws: wsclient.WebSocket | None = None  # owned by run

    async def publish(self) -> None:
        """Send our node now if connected (else the next connection will)."""
        ws, node = self._ws, self.node()
        if ws is None or node is None:
            return
        with contextlib.suppress(wsclient.ConnectionClosed):
            await ws.send_message(NodeMessage(node).encode())

    async def aclose(self) -> None:
        """Close the current connection (``run`` then reconnects unless cancelled)."""
        ws = self._ws
        if ws is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await ws.aclose()

    async def run(self, first: wsclient.WebSocket | None = None) -> NoReturn:
        """Hold the coordinator connection forever.

        Args:
            first: a connection already open whose welcome was read (the
                caller's join); it is used before dialing.

        Raises:
            CoordinatorRefused: ``max_refusals`` consecutive refusals.
        """
        refusals = 0
        ws = first
        while True:
            started = trio.current_time()
            try:
                if ws is None:
                    ws = await dial(self.url, self.headers, timeout=self.connect_timeout,
                                    ssl_context=self.ssl_context)
                refusals = 0
                await self._hold(ws, welcomed=first is not None and ws is first)
            except CoordinatorRefused as exc:
                refusals += 1
                log.info("coordinator refused the connection: HTTP %d: %s", exc.status,
                         exc.message)
                if exc.status not in self.refused_statuses:
                    refusals = 0
                elif self.max_refusals is not None and refusals >= self.max_refusals:
                    raise
            except (CoordinatorUnavailable, wsclient.ConnectionClosed, OSError,
                    trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.info("coordinator connection lost: %s", exc or type(exc).__name__)
            except Exception as exc:
                # A bug on our side or a peer we do not understand: the control
                # plane's trouble must never end a peer (its sessions keep running).
                log.warning("coordinator connection failed: %r", exc)
            finally:
                self._ws = None
                if ws is not None:
                    with trio.CancelScope(shield=True), trio.move_on_after(1):
                        await ws.aclose()
            if ws is not None:
                self.losses += 1
                if self.on_lost is not None:
                    self.on_lost()
            ws = None
            if trio.current_time() - started > self.stable_after:
                self.backoff.reset()
            await trio.sleep(self.backoff.next())

    async def _hold(self, ws: wsclient.WebSocket, *, welcomed: bool) -> None:
        # On the caller's own first connection, the caller read the welcome and
        # published already.
        if not welcomed:
            while True:
                msg = self._parse(await ws.get_message())
                if isinstance(msg, Welcome):
                    self.on_message(msg)
                    break
            node = self.node()
            if node is not None:
                await ws.send_message(NodeMessage(node).encode())
        self._ws = ws
        self.connects += 1
        self.welcomed.set()
        # Both ways of losing the connection end up here, outside the nursery,
        # as one CoordinatorUnavailable (not an exception group).
        lost: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat, ws, nursery.cancel_scope, lost)
            try:
                while True:
                    msg = self._parse(await ws.get_message())
                    if msg is not None:
                        self.on_message(msg)
            except wsclient.ConnectionClosed as exc:
                lost.append(f"closed: {exc}")
            nursery.cancel_scope.cancel()
        raise CoordinatorUnavailable(lost[0] if lost else "lost")

    def _parse(self, text: str | bytes) -> ServerMessage | None:
        try:
            return parse_server_message(text)
        except MessageError as exc:
            log.info("%s", exc)  # (the CLI shows no warnings: logging is not set up)
            return None

    async def _heartbeat(self, ws: wsclient.WebSocket, scope: trio.CancelScope,
                         lost: list[str]) -> None:
        while True:
            await trio.sleep(self.heartbeat)
            try:
                with trio.fail_after(self.heartbeat):
                    await ws.ping()
            except (trio.TooSlowError, wsclient.ConnectionClosed) as exc:
                lost.append(f"no pong within {self.heartbeat:g} s"
                            if isinstance(exc, trio.TooSlowError) else f"closed: {exc}")
                scope.cancel()
                return
