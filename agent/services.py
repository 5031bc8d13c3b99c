"""The services the agent offers on a tunnel stream, by name.

A tunnel peer opens a stream naming a service: ``ssh`` (the SSH server),
``tcp:<port>`` (a byte stream to localhost:<port> in the workspace) or
``tcp:<host>:<port>`` (to a host the workspace can reach, as ``ssh -L`` can).
:func:`parse_service` checks the name (sans-IO); :class:`ServiceRouter` runs
the stream.  Authorisation happened before: only coordinator-approved peers
reach a router.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from agent.stats import ConnStats
from tunnel.splice import splice as tunnel_splice

log = logging.getLogger("burrow.agent.services")

# Bytes per receive_some when copying: big reads, few calls.
MAX_SERVICE_NAME = 64


class ServiceNameError(ValueError):
    """A stream asked for a service that does not exist or is malformed."""


class ForwardError(OSError):
    """The local port of a ``tcp:<port>`` stream could not be reached."""


@dataclass(frozen=True)
class SSHService:
    """The agent's SSH server."""


@dataclass(frozen=True)
class TCPService:
    """A stream to ``host:port`` as seen from the workspace."""

    port: int
    host: str = "127.0.0.1"


Service = SSHService | TCPService


def _valid_port(text: str) -> bool:
    return (
        text.isascii()
        and text.isdigit()
        and not (len(text) > 1 and text[0] == "0")
        and 1 <= int(text) <= 65535
    )


def _valid_host(text: str) -> bool:
    if text.startswith("[") and text.endswith("]"):  # an IPv6 literal
        inner = text[1:-1]
        return bool(inner) and all(c in "0123456789abcdefABCDEF:." for c in inner)
    labels = text.split(".")
    return all(
        label and label.isascii() and label.replace("-", "").isalnum() and label[0] != "-"
        for label in labels
    )


def parse_service(name: str) -> Service:
    """``"ssh"``, ``"tcp:<1..65535>"`` or ``"tcp:<host>:<port>"``.

    Raises:
        ServiceNameError: anything else (the message quotes the name, shortened).
    """
    if name == "ssh":
        return SSHService()
    if len(name) <= MAX_SERVICE_NAME and name.startswith("tcp:"):
        rest = name[4:]
        host, sep, port_text = rest.rpartition(":")
        if not sep and _valid_port(port_text):
            return TCPService(int(port_text))
        if sep and _valid_host(host) and _valid_port(port_text):
            return TCPService(int(port_text), host.strip("[]"))
    shown = name[:MAX_SERVICE_NAME]
    raise ServiceNameError(f"unknown service {shown!r} (want 'ssh' or 'tcp:[HOST:]PORT')")


async def splice(a: trio.abc.Stream, b: trio.abc.Stream, stats: ConnStats | None = None) -> None:
    """Copy both ways until both directions ended; close both (see tunnel.splice).

    Bytes from ``a`` count as in, bytes to ``a`` as out.  A peer going away is
    the normal end of a forward, so a broken stream is not an error here.
    """
    stats = stats or ConnStats()
    await tunnel_splice(a, b, count_ab=stats.add_in, count_ba=stats.add_out)


async def forward_to_local_port(
    stream: trio.abc.Stream, port: int, stats: ConnStats | None = None, host: str = "127.0.0.1"
) -> None:
    """Connect to ``host:port`` and splice ``stream`` to it until both sides end.

    Raises:
        ForwardError: nothing listens there (``stream`` is closed first).
    """
    try:
        local = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        await stream.aclose()
        raise ForwardError(f"cannot reach {host}:{port}: {exc.strerror or exc}") from exc
    if stats is not None:
        stats.session_opened()
    try:
        await splice(stream, local, stats)
    finally:
        if stats is not None:
            stats.session_closed()


class ServiceRouter:
    """Runs each incoming tunnel stream as the service it names.

    Args:
        ssh: handler for ``ssh`` streams (``SSHServer.serve_stream``); None
            refuses them.
        allow_tcp: whether ``tcp:<port>`` streams are allowed.
        tcp_stats: counters for port forwards.
    """

    def __init__(
        self,
        ssh: Callable[[trio.abc.Stream], Awaitable[None]] | None,
        *,
        allow_tcp: bool = True,
        tcp_stats: ConnStats | None = None,
    ) -> None:
        self._ssh = ssh
        self._allow_tcp = allow_tcp
        self.tcp_stats = tcp_stats or ConnStats()
        self.refusals: collections.Counter[str] = collections.Counter()  # by error type

    async def handle(self, service_name: str, stream: trio.abc.Stream) -> None:
        """Serve ``stream`` as ``service_name`` until it ends.

        Raises:
            ServiceNameError: unknown, malformed or disabled service (the
                stream is closed first).
            ForwardError: a ``tcp:`` port nobody listens on.
        """
        try:
            service = parse_service(service_name)
            if isinstance(service, SSHService) and self._ssh is None:
                raise ServiceNameError("ssh is disabled on this agent")
            if isinstance(service, TCPService) and not self._allow_tcp:
                raise ServiceNameError("port forwarding is disabled on this agent")
        except ServiceNameError:
            await stream.aclose()
            raise
        if isinstance(service, SSHService):
            assert self._ssh is not None
            await self._ssh(stream)
        else:
            await forward_to_local_port(stream, service.port, self.tcp_stats, service.host)

    def allow(self, peer_key: bytes, service_name: str) -> bool | str:
        """The tunnel endpoint's ``allow`` hook: True, or why the stream is refused."""
        try:
            service = parse_service(service_name)
        except ServiceNameError as exc:
            return str(exc)
        if isinstance(service, SSHService) and self._ssh is None:
            return "ssh is disabled on this agent"
        if isinstance(service, TCPService) and not self._allow_tcp:
            return "port forwarding is disabled on this agent"
        return True

    async def handle_tunnel_stream(
        self, peer_key: bytes, service_name: str, stream: trio.abc.Stream
    ) -> None:
        """The tunnel endpoint's per-stream handler: never raises for one stream's
        failure (it would end every other stream), logs and counts it instead."""
        try:
            await self.handle(service_name, stream)
        except (ServiceNameError, ForwardError) as exc:
            self.refusals[type(exc).__name__] += 1
            log.info("stream %r from %s refused: %s", service_name, peer_key.hex()[:16], exc)
