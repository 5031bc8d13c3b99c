"""``burrow relay``: a standalone DERP relay (a regional relay / workspace proxy).

Prints ``relay listening on <url>`` (one line, flushed) once it accepts
connections, so scripts and tests can start it with ``--listen 127.0.0.1:0``
and read the port.  SIGINT and SIGTERM shut it down cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from burrow.commands.server import leaf_error, listen_error
from burrow.flags import UsageError, add, add_bool

LOG_LEVELS = ("debug", "info", "warning", "error")


def register(sub: Any) -> None:
    parser = sub.add_parser("relay", help="run a standalone DERP relay")
    add(parser, "--listen", default="127.0.0.1:3001", help="host:port to listen on (port 0: any)")
    add(parser, "--tls-cert", help="PEM certificate file; serve HTTPS (with --tls-key)")
    add(parser, "--tls-key", help="PEM private key file for --tls-cert")
    add(parser, "--mesh-key-file", help="file holding the 32-byte mesh key as 64 hex digits")
    add(
        parser,
        "--mesh-with",
        nargs="*",
        default=[],
        metavar="URL",
        help="sibling relays to mesh with (needs --mesh-key-file)",
    )
    add(parser, "--mesh-ca-file", help="PEM CA bundle to verify https siblings with")
    add_bool(
        parser,
        "--force-websockets",
        help="dial mesh siblings over WebSocket instead of the DERP upgrade",
    )
    add(parser, "--max-connections", default=0, type=int,
        help="open connections in all (0: the open-file limit less headroom)")
    add(parser, "--max-connections-per-source", default=0, type=int,
        help="open connections per client IP (0: 256)")
    add(parser, "--max-connections-per-loopback", default=0, type=int,
        help="open connections per loopback IP, e.g. a reverse proxy (0: --max-connections)")
    add(
        parser,
        "--log-level",
        default="info",
        type=log_level,
        metavar="{" + ",".join(LOG_LEVELS) + "}",
        help="log verbosity",
    )
    parser.set_defaults(run=run)


def log_level(text: str) -> str:
    """One of ``LOG_LEVELS`` (case-insensitive).

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"log level must be one of {', '.join(LOG_LEVELS)}")
    return text.lower()


def read_mesh_key(path: str) -> bytes:
    """The mesh key from ``path``: 64 hex digits (whitespace ignored) or 32 raw bytes.

    Raises:
        UsageError: unreadable file or not a 32-byte key.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read mesh key file {path}: {exc.strerror or exc}") from None
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = raw
    if len(key) != 32:
        raise UsageError(f"mesh key file {path} must hold 32 bytes as 64 hex digits")
    return key


def run(args: argparse.Namespace) -> int:
    from relay.node import RelayConfig, RelayNode

    mesh_key = read_mesh_key(args.mesh_key_file) if args.mesh_key_file else None
    mesh_ssl_context = None
    if args.mesh_ca_file:
        import ssl

        try:
            mesh_ssl_context = ssl.create_default_context(cafile=args.mesh_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load --mesh-ca-file {args.mesh_ca_file}: {exc}") from None
        mesh_ssl_context.set_alpn_protocols(["http/1.1"])
    config = RelayConfig(
        listen=args.listen,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        mesh_key=mesh_key,
        mesh_with=list(args.mesh_with or []),
        force_websockets=args.force_websockets,
        mesh_ssl_context=mesh_ssl_context,
        max_connections=args.max_connections,
        max_per_source=args.max_connections_per_source,
        max_per_loopback=args.max_connections_per_loopback,
    )
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from web.limits import raise_fd_limit

    raise_fd_limit()  # before the front door sizes its connection cap from it
    try:
        node = RelayNode(config)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:  # includes ssl.SSLError
        raise UsageError(f"cannot load TLS certificate/key: {exc}") from None
    import trio

    # A second Ctrl-C while shutting down (or before the receiver is up) must
    # not become a KeyboardInterrupt traceback: outside trio.run's signal
    # receiver, SIGINT and SIGTERM only ask for shutdown, which is underway.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _ignore_signal)
    try:
        trio.run(_serve, node)
    except BaseException as exc:
        leaf = leaf_error(exc)  # trio wraps the bind error in nursery exception groups
        if isinstance(leaf, KeyboardInterrupt):
            return 0
        if isinstance(leaf, OSError):
            sys.stderr.write(f"burrow relay: {listen_error(args.listen, leaf)}\n")
            return 1
        raise
    return 0


def _ignore_signal(signum: int, frame: object) -> None:
    pass


async def _serve(node: Any) -> None:
    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(node.serve)
            print(f"relay listening on {url}", flush=True)

            async def wait_for_signal() -> None:
                async for signum in signals:
                    logging.getLogger("burrow.relay").info(
                        "%s received; shutting down", signal.Signals(signum).name
                    )
                    # Clients get a Restarting frame (they redial steadily
                    # instead of backing off); a second signal skips the grace.
                    async with trio.open_nursery() as draining:

                        async def second_signal() -> None:
                            async for _ in signals:
                                draining.cancel_scope.cancel()
                                return

                        draining.start_soon(second_signal)
                        await node.drain()
                        draining.cancel_scope.cancel()
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(wait_for_signal)
