"""What the agent tells coderd: lifecycle changes, startup-script logs, ports, stats.

Theory of operation.  Every report goes through one :class:`Reporter` task
so that a coderd that is away never blocks the agent's real work (scripts,
sessions).  Lifecycle transitions and log batches wait in an ordered outbox
and are sent oldest first, each retried with backoff until coderd takes it
(a 4xx answer drops it: retrying a refused report cannot help).  The outbox
is bounded: past ``max_log_lines`` queued lines new log lines are dropped
and one marker line says how many, so memory stays bounded while coderd is
down and the gap is visible, not silent.  Ports and stats are snapshots:
only the latest matters, so they are sent periodically and never queued.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from agent.http import CoderdClient, CoderdRefused, CoderdUnreachable
from agent.lifecycle import Lifecycle, State
from agent.ports import listening_ports
from agent.scripts import LogLine
from agent.stats import ConnStats, tunnel_summary

log = logging.getLogger("burrow.agent")

MAX_BACKOFF = 30.0
LOG_BATCH = 500


@dataclass(frozen=True)
class _Lifecycle:
    state: str
    at: float


@dataclass(frozen=True)
class _Logs:
    source: str
    lines: tuple[LogLine, ...]


class Reporter:
    """Sends the agent's reports to coderd in order, in the background.

    Args:
        api: coderd's agent API.
        interval: seconds between port and stats snapshots.
        services: the counters per service name, for stats reports.
        max_log_lines: most log lines waiting while coderd is away.
        tunnel: returns ``Endpoint.stats()`` (or None while there is no
            endpoint), for the tunnel RTT and paths in stats reports.
    """

    def __init__(self, api: CoderdClient, *, interval: float = 15.0,
                 services: Mapping[str, ConnStats] | None = None,
                 max_log_lines: int = 20_000,
                 tunnel: Callable[[], Mapping[str, Any] | None] | None = None) -> None:
        self.api = api
        self.tunnel = tunnel
        self.interval = interval
        self.services = dict(services or {})
        self.max_log_lines = max_log_lines
        self.lifecycle = Lifecycle(time.time())
        self._outbox: collections.deque[_Lifecycle | _Logs] = collections.deque()
        self._queued_lines = 0
        self._dropped_lines = 0
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self.logs_supported = True
        self.sent = collections.Counter[str]()

    # -- producers (never block) ----------------------------------------

    def advance(self, state: State) -> None:
        """Enter ``state`` now and queue its report (illegal moves are ignored, logged)."""
        if not self.lifecycle.can(state):
            log.warning("lifecycle: %s -> %s is not a legal move", self.lifecycle.state.value,
                        state.value)
            return
        at = max(time.time(), self.lifecycle.changed_at)
        self.lifecycle.advance(state, at)
        log.info("lifecycle: %s", state.value)
        self._push(_Lifecycle(state.value, at))

    def add_logs(self, source: str, lines: Sequence[LogLine]) -> None:
        """Queue script output lines (bounded; overflow is counted and marked)."""
        for line in lines:
            log.info("%s: %s", source, line.text)
        room = self.max_log_lines - self._queued_lines
        if room <= 0:
            self._dropped_lines += len(lines)
            return
        if self._dropped_lines:
            marker = LogLine(time.time(), f"[burrow] {self._dropped_lines} lines dropped "
                             "while coderd was unreachable")
            self._dropped_lines = 0
            lines = [marker, *lines]
        taken = tuple(lines[:room])
        self._dropped_lines += len(lines) - len(taken)
        self._queued_lines += len(taken)
        self._push(_Logs(source, taken))

    async def on_output(self, lines: Sequence[LogLine]) -> None:
        """``run_script``'s callback for the startup script."""
        self.add_logs("startup_script", lines)

    async def on_shutdown_output(self, lines: Sequence[LogLine]) -> None:
        self.add_logs("shutdown_script", lines)

    def _push(self, item: _Lifecycle | _Logs) -> None:
        self._outbox.append(item)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wake.set()

    async def flushed(self, timeout: float) -> bool:
        """Wait until everything queued was sent (or ``timeout``); whether it was."""
        with trio.move_on_after(timeout):
            await self._idle.wait()
            return True
        return False

    # -- the sender -----------------------------------------------------

    async def _send(self, item: _Lifecycle | _Logs) -> None:
        if isinstance(item, _Lifecycle):
            await self.api.request("POST", "/workspaceagents/me/lifecycle",
                                   {"state": item.state, "changed_at": item.at})
            self.sent["lifecycle"] += 1
            return
        if not self.logs_supported:
            return
        for i in range(0, len(item.lines), LOG_BATCH):
            chunk = item.lines[i:i + LOG_BATCH]
            body = {"source": item.source,
                    "logs": [{"at": line.at, "text": line.text} for line in chunk]}
            try:
                await self.api.request("POST", "/workspaceagents/me/logs", body)
            except CoderdRefused as exc:
                if exc.status in (404, 405):
                    self.logs_supported = False  # an older coderd: keep the lines local
                    return
                raise
            self.sent["log_lines"] += len(chunk)

    async def run_outbox(self) -> None:
        """Send queued reports forever, oldest first, retrying with backoff."""
        backoff = 0.25
        while True:
            if not self._outbox:
                self._idle.set()
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            item = self._outbox[0]
            try:
                await self._send(item)
            except CoderdUnreachable as exc:
                log.info("report postponed: %s", exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            except CoderdRefused as exc:
                log.warning("coderd refused a report: %s", exc)
            backoff = 0.25
            self._outbox.popleft()
            if isinstance(item, _Logs):
                self._queued_lines -= len(item.lines)

    def ports_body(self) -> dict[str, Any]:
        ports = []
        seen: set[tuple[str, int]] = set()
        for p in listening_ports():
            if (p.family, p.port) in seen:
                continue
            seen.add((p.family, p.port))
            entry: dict[str, Any] = {"port": p.port, "address": p.address, "family": p.family}
            if p.process:
                entry["process"] = p.process[:64]
            ports.append(entry)
        return {"ports": ports[:256]}

    def stats_body(self) -> dict[str, Any]:
        """The stats report: counters per service and the tunnel's sessions, RTT, paths."""
        services: dict[str, dict[str, int]] = {}
        for name, stats in self.services.items():
            snap = stats.snapshot()
            services[name] = {
                "sessions_total": snap.sessions_total, "sessions_open": snap.sessions_open,
                "bytes_in": snap.bytes_in, "bytes_out": snap.bytes_out, "errors": snap.errors,
            }
        body: dict[str, Any] = {"services": services}
        if self.tunnel is not None:
            body["tunnel"] = tunnel_summary(self.tunnel())
        return body

    async def run_snapshots(self, extra: Callable[[], None] | None = None) -> None:
        """Report ports and stats every ``interval`` seconds (failures only logged)."""
        while True:
            for path, make, in_thread in (("/workspaceagents/me/ports", self.ports_body, True),
                                          ("/workspaceagents/me/stats", self.stats_body, False)):
                try:
                    # /proc is read in a worker thread; counters and sessions
                    # belong to the trio thread and are read there.
                    body = await trio.to_thread.run_sync(make) if in_thread else make()
                    await self.api.request("POST", path, body)
                    self.sent[path.rsplit("/", 1)[1]] += 1
                except (CoderdUnreachable, CoderdRefused) as exc:
                    log.debug("snapshot %s not sent: %s", path, exc)
                except Exception:  # e.g. an unreadable /proc: skip this one, keep reporting
                    log.exception("snapshot %s failed", path)
            if extra is not None:
                extra()
            await trio.sleep(self.interval)
