"""DERP relay protocol (Tailscale DERP v2, byte-compatible).  Imports nothing else of the project.

Modules (this package re-exports nothing, so importing the sans-IO codec never
pulls in trio):

- ``derp.frames``: sans-IO frame codec (``FrameDecoder``, ``encode``, events).
- ``derp.errors``: ``DerpError``, ``DerpProtocolError(reason)``,
  ``DerpConnectionClosed``, ``DerpTimeoutError``.
- ``derp.keys``: Curve25519 keys, hex, short display form.
- ``derp.handshake``: sans-IO ClientInfo/ServerInfo NaCl boxes.
- ``derp.server``: ``DerpServer`` -- ``serve(stream)`` runs one connection.
- ``derp.conn``: ``DerpConn`` -- the client side of one connection.
- ``derp.mesh``: mesh links between relays sharing a mesh key.
- ``derp.metrics``: the server's counters.
- HTTP transports and the reconnecting client: ``derp.upgrade``,
  ``derp.websocket``, ``derp.dial``, ``derp.client``.
"""
