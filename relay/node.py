"""The relay edge node: a listener, the front door with ``/derp``, and mesh links.

``RelayNode`` is what ``burrow relay`` runs and what ``burrow server`` embeds
(coderd mounts its API on ``node.frontdoor`` before ``serve``).  ``serve``
binds the listener, reports the bound base URL through ``task_status``,
keeps a mesh link to every ``mesh_with`` sibling (dialed like any client,
with the relay's key and the mesh key; ``derp.mesh.run_mesh_link`` redials
forever), and on cancellation ends every DERP connection before returning.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from functools import partial

import trio

from derp.dial import dial, parse_url
from derp.keys import generate_private_key, key_to_hex
from derp.mesh import run_mesh_link
from derp.server import DerpServer
from relay.derp_routes import mount_derp
from web.frontdoor import FrontDoor
from web.limits import DoorLimits
from web.listener import parse_listen, serve_http

log = logging.getLogger("burrow.relay")


@dataclass
class RelayConfig:
    """Settings of one relay node.

    Attributes:
        listen: ``host:port`` to bind (port 0: any free port).
        tls_cert / tls_key: PEM files; both or neither (TLS when both).
        mesh_key: 32 bytes shared by meshed relays.
        mesh_with: base URLs of sibling relays to mesh with.
        private_key: the relay's DERP private key (random when None).
        force_websockets: dial siblings over WebSocket; advertised to clients.
        mesh_ssl_context: TLS settings for dialing https siblings.
        queue_size: packets queued per DERP client before drops.
        max_connections / max_per_source / max_per_loopback: the front door's
            connection caps (``web.limits.DoorLimits``; 0: its default).
    """

    listen: str = "127.0.0.1:3001"
    tls_cert: str | None = None
    tls_key: str | None = None
    mesh_key: bytes | None = None
    mesh_with: list[str] = field(default_factory=list)
    private_key: bytes | None = None
    force_websockets: bool = False
    mesh_ssl_context: ssl.SSLContext | None = None
    queue_size: int = 512
    max_connections: int = 0
    max_per_source: int = 0
    max_per_loopback: int = 0

    def validate(self) -> None:
        """Check the settings without touching the network.

        Raises:
            ValueError: a bad listen address, TLS half-configured, a mesh
                without a key, a bad sibling URL, or a key of the wrong size.
        """
        parse_listen(self.listen)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.mesh_with and self.mesh_key is None:
            raise ValueError("meshing with siblings needs a mesh key")
        if self.mesh_key is not None and len(self.mesh_key) != 32:
            raise ValueError("the mesh key must be 32 bytes")
        for url in self.mesh_with:
            try:
                parse_url(url)
            except Exception as exc:
                raise ValueError(str(exc)) from exc


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """A TLS server context from PEM files, offering HTTP/1.1 by ALPN.

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: the files do not hold a matching certificate and key.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class RelayNode:
    """One relay process's worth of serving.

    Attributes:
        config: the settings.
        derp_server: the DERP relay core.
        frontdoor: the HTTP front door; mount more routes before ``serve``.
        url: the bound base URL, once serving.
        mesh_transports: sibling URL -> "derp" | "websocket", per last dial.

    Raises:
        ValueError: invalid ``config`` (see ``RelayConfig.validate``).
        OSError / ssl.SSLError: TLS files unreadable or mismatched.
    """

    def __init__(self, config: RelayConfig) -> None:
        config.validate()
        self.config = config
        # Kept here (not read back from the server) for the mesh handshakes.
        self._private_key = config.private_key or generate_private_key()
        self.derp_server = DerpServer(
            self._private_key,
            mesh_key=config.mesh_key,
            queue_size=config.queue_size,
        )
        limits = DoorLimits(max_connections=config.max_connections,
                            max_per_source=config.max_per_source,
                            max_per_loopback=config.max_per_loopback)
        self.frontdoor = FrontDoor(limits=limits)
        mount_derp(self.frontdoor, self.derp_server)
        self.ssl_context: ssl.SSLContext | None = None
        if config.tls_cert is not None and config.tls_key is not None:
            self.ssl_context = server_ssl_context(config.tls_cert, config.tls_key)
        self.url: str | None = None
        self.mesh_transports: dict[str, str] = {}  # sibling URL -> transport of its last dial

    async def _dial_sibling(self, url: str) -> trio.abc.Stream:
        stream, transport = await dial(
            url,
            force_websocket=self.config.force_websockets,
            ssl_context=self.config.mesh_ssl_context,
        )
        log.info("mesh: dialed %s over %s", url, transport)
        self.mesh_transports[url] = transport
        return stream

    async def mesh_link(self, url: str) -> None:
        """Keep a mesh link to the sibling relay at ``url`` until cancelled.

        ``serve`` runs one per ``config.mesh_with``; call it yourself (in your
        own nursery) for siblings found later, e.g. HA replicas.

        Raises:
            ValueError: this node has no mesh key.
        """
        await run_mesh_link(
            self.derp_server,
            partial(self._dial_sibling, url),
            private_key=self._private_key,
            name=url,
        )

    async def drain(
        self, *, restarting: bool = True, reconnect_in: float = 0.5, try_for: float = 60.0,
        grace: float = 1.0,
    ) -> None:
        """Refuse new DERP connections and end the current ones.

        With ``restarting`` every client first gets a Restarting frame, so it
        redials every ``reconnect_in`` s for ``try_for`` s instead of backing
        off, and up to ``grace`` s to receive what is queued for it.  Cancel
        ``serve`` afterwards.
        """
        await self.derp_server.close(
            restarting=restarting, reconnect_in=reconnect_in, try_for=try_for, grace=grace
        )

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started(url)`` once listening.

        Raises:
            OSError: the listen address cannot be bound.
        """
        try:
            async with trio.open_nursery() as nursery:
                url: str = await nursery.start(
                    partial(serve_http, self.frontdoor, self.config.listen,
                            ssl_context=self.ssl_context)
                )
                self.url = url
                log.info("relay %s listening on %s",
                         key_to_hex(self.derp_server.public_key)[:16], url)
                for sibling in self.config.mesh_with:
                    if sibling.rstrip("/") == url:
                        continue
                    nursery.start_soon(self.mesh_link, sibling)
                task_status.started(url)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self.derp_server.close()
