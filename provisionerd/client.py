"""Opening the daemon's WebSocket to coderd (the ``connect`` a daemon is given).

Built-in daemons (inside ``burrow server``) and external ones (``burrow
provisionerd start``) both connect through this, to the server's own URL,
so there is one code path.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio_websocket

from provisionerd import protocol
from provisionerd.daemon import Connect, Unauthorized, WebSocketLike
from sdk import provisioner
from sdk.provisioner import websocket_url as websocket_url  # its home is the SDK

CONNECT_TIMEOUT = 15.0


class _Held:
    """A connection held open by its own task until the daemon closes it."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.done = trio.Event()

    async def send_message(self, message: str | bytes) -> None:
        await self.ws.send_message(message)

    async def get_message(self) -> str | bytes:
        msg: str | bytes = await self.ws.get_message()
        return msg

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        try:
            await self.ws.aclose(code, reason)
        finally:
            self.done.set()


@asynccontextmanager
async def connector(
    base_url: str, *, psk: str, ssl_context: ssl.SSLContext | None = None,
    ca_file: str | None = None,
) -> AsyncIterator[Connect]:
    """A ``connect`` callable for :class:`~provisionerd.daemon.ProvisionerDaemon`.

    Each connection lives in its own task (in a nursery owned by this context
    manager), so a failed or rejected connection never takes the others down.
    ``connect`` raises :class:`~provisionerd.daemon.Unauthorized` for a 401,
    and the connection's error (``OSError``, ``trio_websocket.HandshakeError``,
    ``trio.TooSlowError``) otherwise.

    ``ssl_context`` (else one trusting ``ca_file``'s CAs, else the system's)
    is used for a wss URL.

    Raises:
        ValueError: bad ``base_url`` or an unreadable ``ca_file`` (at once).
    """
    url = websocket_url(base_url)
    if ssl_context is None:
        ssl_context = provisioner.tls_context(base_url, ca_file)
    headers = [(protocol.PSK_HEADER.encode(), psk.encode())]

    async def hold(task_status: trio.TaskStatus[_Held]) -> None:
        started = False
        try:
            async with trio_websocket.open_websocket_url(
                url,
                ssl_context,
                subprotocols=[protocol.SUBPROTOCOL],
                extra_headers=headers,
                max_message_size=protocol.MAX_MESSAGE,
                receive_buffer_size=65536,
                connect_timeout=CONNECT_TIMEOUT,
                disconnect_timeout=2,
            ) as ws:
                held = _Held(ws)
                task_status.started(held)
                started = True
                await held.done.wait()
        except trio_websocket.ConnectionRejected as exc:
            if exc.status_code == 401:
                raise Unauthorized("coderd refused the provisioner pre-shared key") from exc
            raise
        except Exception:
            if not started:
                raise
            # After hand-over, errors surface to the daemon through get/send_message.

    try:
        async with trio.open_nursery() as nursery:

            async def connect() -> WebSocketLike:
                held: _Held = await nursery.start(hold)
                return held

            yield connect
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Let callers write ``except Unauthorized``: one plain error comes out unwrapped.
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], trio.Cancelled):
            raise group.exceptions[0] from None
        raise
