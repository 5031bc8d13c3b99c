"""What the front door refuses, and the budgets it refuses by.

A server dies of floods before it dies of load: ~1,100 half-open connections
used to exhaust a 1024 file-descriptor limit and stop the API and every new
tunnel.  The front door therefore bounds, per process:

* connections: a global cap (``max_connections``, kept below the fd limit so
  the database, terraform and mesh dials still get descriptors) and a cap per
  peer IP (``max_per_source``; loopback has its own, higher cap, since a
  reverse proxy or the built-in provisioners all come from 127.0.0.1).  Over a
  cap the connection gets a canned ``503`` JSON with ``Retry-After`` and is
  closed without reading a request.  Upgraded (DERP, WebSocket) connections
  keep their slot for as long as they live.
* time: a request head must be complete ``header_timeout`` s after its first
  byte (after the accept, for the first request), apart from the keep-alive
  ``idle_timeout`` allowed between requests.
* bytes: request bodies buffered across all connections share one budget
  (``body_budget``).  A body that does not fit gets ``503`` at once rather
  than waiting for room: waiting would hold its descriptor and its bytes
  while the flood that filled the budget goes on, and a client retries a 503
  with ``Retry-After`` anyway.

Every refusal and forced close is counted under a ``Refusal`` key.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass, field
from enum import StrEnum

log = logging.getLogger("burrow.web.limits")

# Descriptors kept free under the connection cap: database, terraform pipes,
# mesh dials, log files.  At least this many, or an eighth of the limit.
FD_HEADROOM = 128
# Connections per peer IP: room for a NAT'd office's DERP clients, far below a flood.
PER_SOURCE = 256


class Refusal(StrEnum):
    """Why the front door refused or closed a connection (metric keys)."""

    GLOBAL_CAP = "refused_global_cap"
    SOURCE_CAP = "refused_source_cap"
    HEADER_TIMEOUT = "closed_header_timeout"
    IDLE_TIMEOUT = "closed_idle_timeout"
    NOT_HTTP = "closed_not_http"
    BODY_TOO_LARGE = "refused_body_too_large"
    BODY_BUDGET = "refused_body_budget"
    HEAD_CHECK = "refused_head_check"
    ACCEPT_EMFILE = "accept_out_of_fds"


def raise_fd_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; returns the soft limit.

    Never raises: a limit that cannot be raised is logged and left as it is.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target <= soft:
        log.debug("open-file limit: %d (the hard limit)", soft)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("open-file limit stays %d: cannot raise it to %d: %s", soft, target, exc)
        return soft
    log.info("open-file limit raised from %d to %d", soft, target)
    return target


def default_max_connections() -> int:
    """The connection cap that leaves ``FD_HEADROOM`` descriptors for everything else."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, soft - max(FD_HEADROOM, soft // 8))


@dataclass
class DoorLimits:
    """The front door's caps and deadlines (0 for a cap: its default).

    Attributes:
        header_timeout: seconds for a complete request head.
        idle_timeout: seconds a keep-alive connection may wait for its next request.
        body_timeout: seconds a request body may take to arrive (then 408).
        max_connections: open connections, all sources together.
        max_per_source: open connections per peer IP (``PER_SOURCE``).
        max_per_loopback: open connections per loopback IP (reverse proxies,
            built-in daemons); defaults to ``max_connections``.
        body_budget: bytes of request bodies buffered across all connections.
        retry_after: seconds advertised in ``Retry-After`` on a 503.
    """

    header_timeout: float = 10.0
    idle_timeout: float = 120.0
    body_timeout: float = 60.0
    max_connections: int = 0
    max_per_source: int = 0
    max_per_loopback: int = 0
    body_budget: int = 256 * 1024 * 1024
    retry_after: int = 5

    def __post_init__(self) -> None:
        if self.max_connections <= 0:
            self.max_connections = default_max_connections()
        if self.max_per_source <= 0:
            self.max_per_source = min(PER_SOURCE, self.max_connections)
        if self.max_per_loopback <= 0:
            self.max_per_loopback = self.max_connections


def source_of(remote: str) -> str:
    """The peer IP of ``"ip:port"`` (``"?"`` stays ``"?"``)."""
    host, sep, _ = remote.rpartition(":")
    return host if sep else remote


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1")


@dataclass
class Gate:
    """Open connections, in total and per source IP; and the shared body budget."""

    limits: DoorLimits
    open: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    body_bytes: int = 0
    counts: dict[Refusal, int] = field(default_factory=lambda: dict.fromkeys(Refusal, 0))

    def count(self, reason: Refusal) -> None:
        self.counts[reason] += 1

    def admit(self, ip: str) -> Refusal | None:
        """Take a connection slot for ``ip``; the refusal reason when there is none."""
        if self.open >= self.limits.max_connections:
            self.count(Refusal.GLOBAL_CAP)
            return Refusal.GLOBAL_CAP
        cap = self.limits.max_per_loopback if is_loopback(ip) else self.limits.max_per_source
        held = self.by_source.get(ip, 0)
        if held >= cap:
            self.count(Refusal.SOURCE_CAP)
            return Refusal.SOURCE_CAP
        self.open += 1
        self.by_source[ip] = held + 1
        return None

    def release(self, ip: str) -> None:
        """Give back the slot ``admit`` took for ``ip``."""
        self.open -= 1
        held = self.by_source.get(ip, 1) - 1
        if held <= 0:
            self.by_source.pop(ip, None)
        else:
            self.by_source[ip] = held

    def reserve_body(self, n: int) -> bool:
        """Take ``n`` bytes of the body budget; False (nothing taken) when they do not fit."""
        if self.body_bytes + n > self.limits.body_budget:
            return False
        self.body_bytes += n
        return True

    def release_body(self, n: int) -> None:
        self.body_bytes -= n

    def snapshot(self) -> dict[str, int]:
        """Metric name -> value: every ``Refusal`` counter and the current gauges."""
        out = {str(k): v for k, v in self.counts.items()}
        out["connections_open"] = self.open
        out["body_bytes_buffered"] = self.body_bytes
        return out
