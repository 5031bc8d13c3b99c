"""``burrow server``: the control plane with its embedded relay front door."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import signal
import sys
from typing import Any

from burrow.flags import UsageError, add

# flag name -> (ServerConfig field, type, help)
_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--listen", "listen", str, "address to serve HTTP on (port 0 picks one)"),
    ("--access-url", "access_url", str,
     "URL workspaces and clients reach this server at (default: the listen URL)"),
    ("--data-dir", "data_dir", str,
     "directory for the SQLite database and work files (default: ~/.local/share/burrow)"),
    ("--postgres-url", "postgres_url", str, "use PostgreSQL at this URL instead of SQLite"),
    ("--provisioner-daemons", "provisioner_daemons", int, "built-in provisioner daemons"),
    ("--provisioner-psk", "provisioner_psk", str,
     "pre-shared key external provisioner daemons authenticate with"),
    ("--heartbeat-timeout", "heartbeat_timeout", float,
     "seconds without a provisioner heartbeat before its job fails"),
    ("--log-format", "log_format", str, "log lines: human or json"),
    ("--prometheus-address", "prometheus_address", str,
     "serve Prometheus metrics on this address (off when empty)"),
    ("--tls-cert", "tls_cert", str, "PEM certificate: serve HTTPS (with --tls-key)"),
    ("--tls-key", "tls_key", str, "PEM private key for --tls-cert"),
    ("--max-connections", "max_connections", int,
     "open connections in all (0: the open-file limit less headroom)"),
    ("--max-connections-per-source", "max_connections_per_source", int,
     "open connections per client IP (0: 256)"),
    ("--max-connections-per-loopback", "max_connections_per_loopback", int,
     "open connections per loopback IP, e.g. a reverse proxy (0: --max-connections)"),
]


def parse_tags(raw: Any) -> dict[str, str]:
    """``k=v,k2=v2`` (or a YAML mapping) -> tags.  Raises ValueError."""
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    tags: dict[str, str] = {}
    for item in str(raw).split(","):
        if not item.strip():
            continue
        key, sep, value = item.strip().partition("=")
        if not sep or not key or not value:
            raise ValueError(f"tags are k=v pairs separated by commas, got {item!r}")
        tags[key] = value
    return tags


parse_tags.__name__ = "k=v list"
_OPTIONS.append(
    ("--provisioner-tags", "provisioner_tags", parse_tags,
     "k=v,... tags of the built-in daemons (a job goes to daemons having all its template's tags)"),
)


# Shown in --help; the values themselves live in coderd.server.ServerConfig
# (imported only when the command runs, to keep `burrow --help` light).
_DEFAULTS = {
    "listen": "127.0.0.1:3000",
    "provisioner_daemons": 3,
    "heartbeat_timeout": 30.0,
    "log_format": "human",
}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "server",
        help="run the control plane (API, relay front door, provisioners)",
        description="Run coderd: the API under /api/v2, built-in provisioners, the relay "
        "front door. Options come from flags, BURROW_<NAME> environment variables, then "
        "the YAML file given with --config (keys are the flag names).",
    )
    add(p, "--config", help="YAML file of options (keys: the flag names without dashes)")
    for flag, fld, typ, text in _OPTIONS:
        default = _DEFAULTS.get(fld)
        shown = f" (default: {default})" if default is not None else ""
        add(p, flag, help=text + shown if "(default" not in text else text, type=typ)
    p.set_defaults(run=run)


def _load_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise UsageError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must be a mapping of option names")
    return data


def build_config(args: argparse.Namespace) -> Any:
    """Flags and environment first, then the YAML file, then defaults.

    Raises:
        UsageError: unknown or mistyped YAML keys, or an invalid value.
    """
    from coderd.server import ServerConfig

    file_values = _load_yaml(args.config) if args.config else {}
    known = {flag.lstrip("-"): (fld, typ) for flag, fld, typ, _ in _OPTIONS}
    values: dict[str, Any] = {}
    for key, raw in file_values.items():
        name = str(key).replace("_", "-")
        if name not in known:
            raise UsageError(f"unknown option in {args.config}: {key}")
        fld, typ = known[name]
        try:
            values[fld] = typ(raw)
        except (TypeError, ValueError):
            raise UsageError(f"option {key} in {args.config} must be a {typ.__name__}") from None
    for _flag, fld, _typ, _ in _OPTIONS:
        given = getattr(args, fld)
        if given is not None:
            values[fld] = given
    config = ServerConfig(**values)
    if config.log_format not in ("human", "json"):
        raise UsageError("--log-format must be human or json")
    if config.provisioner_daemons < 0:
        raise UsageError("--provisioner-daemons must be 0 or more")
    if config.heartbeat_timeout <= 0:
        raise UsageError("--heartbeat-timeout must be positive")
    return dataclasses.replace(config)


def run(args: argparse.Namespace) -> int:
    import logging

    import trio

    from coderd.server import configure_logging, run_server
    from coderd.store.base import StoreError
    from sdk.version import VERSION

    config = build_config(args)
    if config.tls_cert and config.tls_key:
        # Checked up front: a missing or bad PEM file would otherwise surface
        # from the listener as "cannot listen on ...".
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                config.tls_cert, config.tls_key
            )
        except OSError as exc:
            message = exc.strerror or str(exc)
            print(f"burrow server: cannot load --tls-cert/--tls-key: {message}", file=sys.stderr)
            return 2
    configure_logging(config.log_format)
    from web.limits import raise_fd_limit

    raise_fd_limit()  # before the front door sizes its connection cap from it

    async def main() -> None:
        # SIGINT/SIGTERM cancel everything, so shutdown runs through the
        # ordinary cancellation path (connections closed, database closed).
        # The signal is watched from the start, not only once the server is
        # ready: a start-up that never completes must still stop on SIGTERM.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                url = await nursery.start(run_server, config)
                # The version goes in the log (stderr) once serving -- a start-up
                # error stays one line; the stdout line keeps the form scripts
                # and `burrow up` parse.
                logging.getLogger("burrow.server").info(
                    "burrow server %s serving on %s", VERSION, url)
                print(f"burrow server listening on {url}", flush=True)
        print("burrow server stopped", file=sys.stderr, flush=True)

    try:
        trio.run(main)
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:
        leaf = leaf_error(exc)
        if isinstance(leaf, KeyboardInterrupt):
            return 0
        if isinstance(leaf, StoreError | OSError | ValueError):
            message = " ".join(str(leaf).split())
            if isinstance(leaf, OSError) and not isinstance(leaf, StoreError):
                message = listen_error(config.listen, leaf)
            print(f"burrow server: {message}", file=sys.stderr, flush=True)
            return 1
        raise
    return 0


def leaf_error(exc: BaseException) -> BaseException:
    """The one error inside nested single-member exception groups (else the group)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


_LISTEN_HINTS = {
    errno.EADDRINUSE: "address already in use: another process listens there; stop it or "
    "choose another --listen",
    errno.EACCES: "permission denied: ports below 1024 need privileges; choose another --listen",
    errno.EADDRNOTAVAIL: "no such address on this machine; choose another --listen",
}


def listen_error(listen: str, exc: OSError) -> str:
    """One line for a listener that could not bind ``listen`` (``burrow server``/``relay``)."""
    hint = _LISTEN_HINTS.get(exc.errno or 0)
    if hint is None:
        hint = " ".join((exc.strerror or str(exc)).split())
    return f"cannot listen on {listen}: {hint}"
