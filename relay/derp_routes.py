"""The ``/derp`` endpoints on the front door.

- ``/derp`` with ``Upgrade: DERP``: 101 (``Upgrade: DERP``, ``Derp-Version: 2``,
  ``Derp-Public-Key``), then the DERP server runs on the raw stream.
- ``/derp`` with ``Upgrade: websocket`` and subprotocol ``derp``: the
  WebSocket handshake, then the DERP server runs on a ``WebSocketStream``.
- ``/derp`` with neither: 426 Upgrade Required.
- ``/derp/probe`` and ``/derp/latency-check``: an empty 200 at once (GET or
  HEAD), for clients measuring latency to each region.
"""

from __future__ import annotations

from derp.keys import key_to_hex
from derp.server import DerpServer
from derp.websocket import WebSocketStream
from web.frontdoor import FrontDoor
from web.http import Handler, Request, Response, Upgrade

PROBE_PATHS = ("/derp/probe", "/derp/latency-check")


def _tokens(value: str) -> list[str]:
    return [t.strip().lower() for t in value.split(",") if t.strip()]


def derp_handler(server: DerpServer) -> Handler:
    """The handler for ``/derp`` and its probe paths, serving ``server``."""
    public_hex = key_to_hex(server.public_key)

    async def handle(request: Request, upgrade: Upgrade) -> Response | None:
        if request.path in PROBE_PATHS:
            if request.method not in ("GET", "HEAD"):
                return Response.error(405, "method not allowed")
            return Response(200, headers=[("Cache-Control", "no-store")])
        if request.path != "/derp":
            return Response.error(404, "not found")
        wants = _tokens(request.header("upgrade"))
        connection = _tokens(request.header("connection"))
        if "derp" in wants and "upgrade" in connection:
            stream = await upgrade.accept_raw(
                [("Derp-Version", "2"), ("Derp-Public-Key", public_hex)], "DERP"
            )
            await server.serve(stream, remote=request.remote)
            return None
        if upgrade.is_websocket:
            if "derp" not in _tokens(request.header("sec-websocket-protocol")):
                return Response.error(400, "WebSocket subprotocol 'derp' required")
            if request.header("sec-websocket-version") != "13" or not request.header(
                "sec-websocket-key"
            ):
                return Response.error(400, "bad WebSocket handshake")
            raw = await upgrade.accept_websocket_stream("derp")
            await server.serve(WebSocketStream(raw, client=False), remote=request.remote)
            return None
        return Response.error(
            426, "DERP requires a connection upgrade", "send Upgrade: DERP or a WebSocket"
        )

    return handle


def mount_derp(frontdoor: FrontDoor, server: DerpServer) -> None:
    """Mount ``/derp`` (and its probe paths) for ``server`` on ``frontdoor``."""
    frontdoor.mount("/derp", derp_handler(server), max_body=0)
