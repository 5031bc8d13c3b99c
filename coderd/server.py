"""``burrow server``: coderd on the relay front door, with built-in provisioners.

Start-up order: open and migrate the store; build the API router; mount it at
``/api/v2`` on the embedded relay node's front door (the node also serves
``/derp``: this server is the primary DERP region), with the provisioner daemon endpoint
(``coderd.provisionerd_api``) at ``/api/v2/provisionerd``; listen; then start
the job reaper and the built-in provisioner daemons, which connect back to
our own URL over a WebSocket with an internal pre-shared key generated at
start-up (never logged).  Built-in and external daemons share one code path.

The provisioner pieces are looked up at run time (``_provisioners``) so the
server runs, and says so, when they are missing.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import secrets
import ssl
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from coderd import auth, builds, metrics
from coderd.api.app import make_router
from coderd.api.router import AGENT, PUBLIC, Router
from coderd.api.schema import ApiError
from coderd.archive import MAX_UPLOAD
from coderd.deps import Coderd, use
from coderd.store.base import Store, StoreError
from coderd.store.factory import open_store
from derp.keys import key_to_hex
from peer import relaymap
from relay.node import RelayConfig, RelayNode
from web.frontdoor import FrontDoor
from web.http import HeadCheck, Request, RequestHead, Response, Upgrade
from web.listener import serve_http

log = logging.getLogger("burrow.server")

PROVISIONERD_PATH = "/api/v2/provisionerd"


@dataclass
class ServerConfig:
    """Every ``burrow server`` option (flag, ``BURROW_<NAME>``, YAML key)."""

    listen: str = "127.0.0.1:3000"
    access_url: str = ""
    data_dir: str = ""
    postgres_url: str = ""
    provisioner_daemons: int = 3
    provisioner_psk: str = ""
    provisioner_tags: dict[str, str] = field(default_factory=dict)
    heartbeat_timeout: float = 30.0
    log_format: str = "human"
    prometheus_address: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    max_connections: int = 0  # the front door's caps (web.limits.DoorLimits; 0: default)
    max_connections_per_source: int = 0
    max_connections_per_loopback: int = 0

    def __repr__(self) -> str:  # never print secrets
        return (
            f"ServerConfig(listen={self.listen!r}, access_url={self.access_url!r}, "
            f"data_dir={self.data_dir!r}, postgres={'yes' if self.postgres_url else 'no'}, "
            f"provisioner_daemons={self.provisioner_daemons})"
        )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(fmt: str) -> None:
    """One line per event on stderr, human-readable or JSON."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _metrics_handler(cd: Coderd, node: RelayNode, prov: Any, started: float) -> Any:
    async def handler(request: Request, upgrade: Upgrade) -> Response:
        text = metrics.render(
            cd.metrics,
            jobs_by_status=await cd.store.count_jobs_by_status(),
            daemons_connected=len(prov.connected) if prov is not None else 0,
            derp=node.derp_server.metrics.snapshot(),
            web=node.frontdoor.counters,
            uptime=time.time() - started,
        )
        return Response(200, text.encode(), [("Content-Type", "text/plain; version=0.0.4")])

    return handler


def api_head_check(router: Router) -> HeadCheck:
    """The ``/api/v2`` check run on a request head, before its body is read.

    Only requests that carry a body are checked (the rest cost nothing to
    read and go through the router as before): no route for it -> the
    router's 404/405; a declared length over the route's cap -> 413; a
    route that needs a user or agent token -> the token is authenticated now
    (one store lookup; the router looks again) and a missing or bad one gets
    401, so nobody without a credential makes the server buffer a body.
    """

    async def check(head: RequestHead) -> Response | None:
        if not head.content_length and "transfer-encoding" not in head.headers:
            return None
        try:
            route, _ = router.match(head.method, head.path)
            if head.content_length is not None and head.content_length > route.max_body:
                raise ApiError(413, "request body too large", f"limit is {route.max_body} bytes")
            if route.auth == AGENT:
                token = head.header(auth.AGENT_HEADER).strip()
                await auth.authenticate_agent(router.cd.store, token)
            elif route.auth != PUBLIC:
                await auth.authenticate(router.cd.store, auth.token_from_headers(head.headers))
        except ApiError as exc:
            return Response.json(exc.status, exc.body())
        except auth.AuthError as exc:
            return Response.json(exc.status, {"message": str(exc)})
        except StoreError:
            return None  # the router reports the database error as it always does
        return None

    return check


async def _provisioners(
    cd: Coderd,
    config: ServerConfig,
    door: FrontDoor,
    nursery: trio.Nursery,
) -> tuple[str, Any] | None:
    """Mount the provisioner daemon endpoint and start its reaper.

    Returns ``(internal_psk, api)`` or None when ``coderd.provisionerd_api``
    is not available (then the server still serves the API; builds stay
    pending).
    """
    try:
        mod = importlib.import_module("coderd.provisionerd_api")
        api_cls = mod.ProvisionerAPI
    except (ImportError, AttributeError) as exc:
        log.warning("provisioner API unavailable (%s): builds will stay pending", exc)
        return None
    internal_psk = secrets.token_urlsafe(32)

    async def completed(job: Any) -> None:
        await builds.on_job_completed(job, cd.store, cd.pubsub)

    api = api_cls(
        cd.store,
        cd.pubsub,
        psk=config.provisioner_psk or None,
        on_job_completed=completed,
        heartbeat_timeout=config.heartbeat_timeout,
        internal_psk=internal_psk,
    )
    # A WebSocket endpoint: its messages are not HTTP bodies, so any body is refused
    # (413) at the head instead of being read (it used to allow 64 MiB).
    door.mount(PROVISIONERD_PATH, api.handler, max_body=0)
    nursery.start_soon(api.run_reaper)
    return internal_psk, api


async def _builtin_daemons(
    url: str, psk: str, config: ServerConfig, data_dir: Path, nursery: trio.Nursery
) -> int:
    """Start ``config.provisioner_daemons`` built-in daemons; returns how many.

    They are ``provisionerd.builtin.run_builtin_daemons``: the same daemon and
    WebSocket path as ``burrow provisionerd start``, keyed with ``psk``.  The
    server reports ready only after every one was welcomed.
    """
    if config.provisioner_daemons <= 0:
        return 0
    try:
        from provisionerd.builtin import run_builtin_daemons
    except ImportError as exc:
        log.warning("built-in provisioners unavailable: %s", exc)
        return 0
    await nursery.start(
        partial(
            run_builtin_daemons,
            url,
            psk=psk,
            count=config.provisioner_daemons,
            workdir_root=data_dir / "provisioner-work",
            tags=config.provisioner_tags,
            ssl_context=_own_certificate_context(config) if config.tls_cert else None,
        )
    )
    return config.provisioner_daemons


def _own_certificate_context(config: ServerConfig) -> ssl.SSLContext:
    """Client TLS for connections back to this server: trust its own certificate.

    The built-in daemons dial the server's own https URL on loopback; the
    certificate (self-signed, or a leaf of a private CA) is pinned as the trust
    anchor, and the name is not checked since the address is our own listener.
    """
    ctx = ssl.create_default_context(cafile=config.tls_cert)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.check_hostname = False
    return ctx


async def _expire_keys(store: Store, every: float = 3600.0) -> None:
    """Forever: drop expired session and API tokens (they are refused anyway)."""
    while True:
        try:
            n = await store.delete_expired_api_keys(time.time())
            if n:
                log.info("removed %d expired session/API token(s)", n)
        except StoreError as exc:
            log.error("token cleanup: %s", exc)
        await trio.sleep(every)


def primary_relay_map(access_url: str, public_key: str) -> relaymap.RelayMap:
    """The relay map this server serves: its embedded relay as region 1.

    Registered regional relays will join it as further regions (each with its
    nodes and health); the JSON stays what agents and clients parse.
    """
    node = relaymap.RelayNode(access_url, access_url.rstrip("/") + "/derp", public_key,
                              "primary")
    return relaymap.RelayMap((relaymap.Region(1, "primary", "primary (embedded)", access_url,
                                              (node,)),))


def default_data_dir() -> str:
    """``$XDG_DATA_HOME/burrow``, else ``~/.local/share/burrow``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "burrow")


async def run_server(
    config: ServerConfig, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; ``task_status.started`` gets the listening URL.

    Raises:
        StoreError: the database cannot be opened or migrated.
        OSError: the listen address cannot be bound.
        ValueError: a malformed listen address.
    """
    data_dir = Path(config.data_dir or default_data_dir())
    opened = await open_store(postgres_url=config.postgres_url or None, data_dir=str(data_dir))
    store: Store = opened.store
    try:
        if opened.migrations_applied:
            log.info("database migrated to version %d", max(opened.migrations_applied))
        cd = Coderd(store, opened.pubsub, config.access_url)
        use(cd)
        node = RelayNode(RelayConfig(listen=config.listen, tls_cert=config.tls_cert or None,
                                     tls_key=config.tls_key or None,
                                     max_connections=config.max_connections,
                                     max_per_source=config.max_connections_per_source,
                                     max_per_loopback=config.max_connections_per_loopback))
        door = node.frontdoor
        router = make_router(cd)
        door.mount("/api/v2", router.handle, max_body=MAX_UPLOAD,
                   head_check=api_head_check(router))
        started = time.time()
        async with trio.open_nursery() as nursery:
            prov = await _provisioners(cd, config, door, nursery)
            nursery.start_soon(_expire_keys, store)
            url: str = await nursery.start(node.serve)
            if not cd.access_url:
                cd.access_url = url
            cd.relay_regions = primary_relay_map(
                cd.access_url, key_to_hex(node.derp_server.public_key)).to_json()["regions"]
            if config.prometheus_address:
                api = prov[1] if prov is not None else None
                mdoor = FrontDoor()
                mdoor.mount("/metrics", _metrics_handler(cd, node, api, started))
                murl = await nursery.start(serve_http, mdoor, config.prometheus_address)
                log.info("prometheus metrics on %s/metrics", murl)
            if prov is not None:
                n = await _builtin_daemons(url, prov[0], config, data_dir, nursery)
                log.info("%d built-in provisioner daemon(s) started", n)
            if await store.count_users() == 0:
                log.info("no users yet: run `burrow login %s` to create the owner", cd.access_url)
            task_status.started(url)
            await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await opened.aclose()
