"""``--tcp`` port-forward specs for ``burrow port-forward`` (sans-IO).

Accepted forms (local side first, as ``ssh -L``)::

    8080                    local 127.0.0.1:8080 -> workspace port 8080
    8080:80                 local 127.0.0.1:8080 -> workspace port 80
    127.0.0.1:8080:80       an explicit local bind address
    [::1]:8080:80           an IPv6 bind address, bracketed
    9000-9002               three ports, each to the same port
    9000-9002:7000-7002     ranges of the same length, pairwise

Each spec becomes a list of :class:`Forward`; :func:`parse_all` also refuses
two forwards on the same local address and port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

MAX_RANGE = 1024
DEFAULT_BIND = "127.0.0.1"


class PortSpecError(ValueError):
    """A ``--tcp`` value is malformed; the message says what and how to fix it."""


@dataclass(frozen=True, slots=True)
class Forward:
    """Listen on ``bind:local_port``; each connection goes to workspace ``remote_port``."""

    bind: str
    local_port: int
    remote_port: int

    @property
    def service(self) -> str:
        """The tunnel service name the agent serves."""
        return f"tcp:{self.remote_port}"


def _port(text: str, spec: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise PortSpecError(f"--tcp {spec!r}: {text!r} is not a port number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise PortSpecError(f"--tcp {spec!r}: port {port} is out of range 1-65535")
    return port


def _ports(text: str, spec: str) -> list[int]:
    if "-" in text:
        lo_text, _, hi_text = text.partition("-")
        lo, hi = _port(lo_text, spec), _port(hi_text, spec)
        if hi < lo:
            raise PortSpecError(f"--tcp {spec!r}: range {text} runs backwards")
        if hi - lo + 1 > MAX_RANGE:
            raise PortSpecError(f"--tcp {spec!r}: range {text} has more than {MAX_RANGE} ports")
        return list(range(lo, hi + 1))
    return [_port(text, spec)]


def _bind(text: str, spec: str) -> str:
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost":
            return DEFAULT_BIND
        raise PortSpecError(
            f"--tcp {spec!r}: bind address {text!r} must be an IP address"
        ) from None
    if addr.version == 6 and not text.startswith("["):
        raise PortSpecError(f"--tcp {spec!r}: write IPv6 addresses in brackets, [{host}]")
    return str(addr)


def parse(spec: str, default_bind: str = DEFAULT_BIND) -> list[Forward]:
    """The forwards one ``--tcp`` value asks for.

    Raises:
        PortSpecError: malformed spec, bad port or address, or ranges of different length.
    """
    text = spec.strip()
    if not text:
        raise PortSpecError("--tcp needs a value like 8080:80")
    bind = default_bind
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise PortSpecError(f"--tcp {spec!r}: expected [address]:local:remote")
        bind = _bind(text[: end + 1], spec)
        text = text[end + 2 :]
        parts = text.split(":")
    else:
        parts = text.split(":")
        if len(parts) == 3:
            bind = _bind(parts[0], spec)
            parts = parts[1:]
    if len(parts) not in (1, 2) or not all(parts):
        raise PortSpecError(
            f"--tcp {spec!r}: expected LOCAL[:REMOTE] or ADDRESS:LOCAL:REMOTE "
            "(ports or ranges like 9000-9002)"
        )
    local = _ports(parts[0], spec)
    remote = _ports(parts[1], spec) if len(parts) == 2 else local
    if len(local) != len(remote):
        raise PortSpecError(
            f"--tcp {spec!r}: local range has {len(local)} ports, remote range {len(remote)}"
        )
    return [Forward(bind, lp, rp) for lp, rp in zip(local, remote, strict=True)]


def parse_all(specs: Iterable[str], default_bind: str = DEFAULT_BIND) -> list[Forward]:
    """Every forward of several ``--tcp`` values.

    Raises:
        PortSpecError: any spec is bad, or two forwards share a local address and port.
    """
    out: list[Forward] = []
    seen: dict[tuple[str, int], str] = {}
    for spec in specs:
        for fwd in parse(spec, default_bind):
            key = (fwd.bind, fwd.local_port)
            if key in seen:
                raise PortSpecError(
                    f"--tcp {spec!r}: local port {fwd.local_port} is already used by "
                    f"--tcp {seen[key]!r}"
                )
            seen[key] = spec
            out.append(fwd)
    return out
