"""The process groups the agent starts (SSH sessions, scripts), recorded so they can be ended.

Every session and script runs in a new session (``start_new_session``): its
process group id is the child's pid, and everything it starts stays in that
group unless it calls ``setsid``/``setpgid`` itself.  The agent records each
group in :data:`tracked`:

* in memory, always: on a clean exit the agent ends what is left
  (:meth:`Groups.end_all`: SIGHUP and SIGTERM, then SIGKILL after a grace);
* durably, when the agent was given a run dir (``burrow agent --run-dir``):
  one file per group, ``DIR/sessions/<pgid>``, holding the leader's start
  time (``/proc/<pid>/stat`` field 22).  Whatever outlives an agent that was
  SIGKILLed -- the supervisor (:mod:`agent.supervise`), the template's
  stop/delete step -- ends the groups listed there.

A record is dropped once its group is empty (checked when the leader is
reaped and on each new record): background jobs of a closed session stay
recorded and are ended on stop with the rest.

Pid reuse.  While a group has members its id cannot be given to a new
process (the kernel keeps the number in use), so a recorded group is ours
unless it emptied and the number was reused.  :func:`matches` therefore
checks: if a process with the group's id exists, its start time must be the
recorded one (else the record is stale and skipped); if none exists, the
leader is gone and whatever is left in the group is ours.  The template's
shell loop applies the same rule.

Not caught here: a descendant that leaves its group (``setsid``, double
fork).  The supervisor, a child subreaper, catches those while it runs (it
ends every descendant of its own, see :func:`descendants`).  A cgroup would
catch them even after the supervisor is SIGKILLed, but needs a writable,
delegated cgroup v2 tree, which an unprivileged workspace user seldom has.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("burrow.agent.procgroups")

# SIGHUP (a terminal hang-up: shells pass it to their jobs) and SIGTERM, then
# SIGKILL after the grace.
POLITE_SIGNALS = (signal.SIGHUP, signal.SIGTERM)
END_GRACE = 3.0


@dataclass(frozen=True)
class Proc:
    """One line of the process table.

    Attributes:
        pid: process id.
        ppid: parent's pid.
        pgid: process group id.
        state: ``/proc`` state letter (``Z`` for a zombie).
        start: start time since boot, in clock ticks.
    """

    pid: int
    ppid: int
    pgid: int
    state: str
    start: int


def _parse_stat(pid: int, text: str) -> Proc | None:
    # "pid (comm) state ppid pgrp ..."; comm may hold spaces and parentheses.
    rest = text.rsplit(")", 1)[-1].split()
    try:
        return Proc(pid, int(rest[1]), int(rest[2]), rest[0], int(rest[19]))
    except (IndexError, ValueError):
        return None


def read_proc(pid: int) -> Proc | None:
    """``/proc/<pid>/stat`` parsed, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return _parse_stat(pid, f.read())
    except (OSError, ValueError):
        return None


def process_table() -> list[Proc]:
    """Every process visible in ``/proc``."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            proc = read_proc(int(name))
            if proc is not None:
                out.append(proc)
    return out


def descendants(root: int, table: Iterable[Proc] | None = None) -> list[Proc]:
    """Every live (non-zombie) descendant of ``root``, children first."""
    children: dict[int, list[Proc]] = {}
    for proc in process_table() if table is None else table:
        children.setdefault(proc.ppid, []).append(proc)
    out: list[Proc] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child.pid != root:
                todo.append(child.pid)
                if child.state != "Z":
                    out.append(child)
    return out


@dataclass(frozen=True)
class Target:
    """A process group or a single process to end.

    Attributes:
        pid: the group id (``group``) or the process id.
        start: the start time the leader/process had when recorded (None: unknown).
        group: signal the whole group, not just the process.
    """

    pid: int
    start: int | None
    group: bool = True


def matches(target: Target, table: dict[int, Proc] | None = None) -> bool:
    """Whether ``target`` still names what was recorded (see "Pid reuse" above)."""
    proc = table.get(target.pid) if table is not None else read_proc(target.pid)
    if proc is None or proc.state == "Z":
        return target.group  # leader gone: the members left in the group are ours
    return target.start is None or proc.start == target.start


def alive(target: Target, table: Iterable[Proc]) -> bool:
    """Whether ``target`` has a live (non-zombie) process left."""
    if target.group:
        return any(p.pgid == target.pid and p.state != "Z" for p in table)
    return any(p.pid == target.pid and p.state != "Z" for p in table)


def send(targets: Iterable[Target], sig: int) -> None:
    """Signal each target that still matches; missing ones are skipped."""
    table = {p.pid: p for p in process_table()}
    for t in targets:
        if not matches(t, table):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if t.group:
                os.killpg(t.pid, sig)
            else:
                os.kill(t.pid, sig)


def end(targets: Iterable[Target], *, grace: float = END_GRACE,
        sleep: Callable[[float], None] = time.sleep) -> None:
    """SIGHUP and SIGTERM to every target, SIGKILL to those still alive after ``grace``.

    Blocks up to ``grace`` seconds (less once all are gone).
    """
    targets = list(targets)
    if not targets:
        return
    for sig in POLITE_SIGNALS:
        send(targets, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        table = process_table()
        if not any(alive(t, table) for t in targets):
            return
        sleep(0.05)
    send(targets, signal.SIGKILL)


class Groups:
    """The process groups this process started (see the module docstring)."""

    def __init__(self) -> None:
        self.directory: Path | None = None
        self._groups: dict[int, int | None] = {}  # pgid -> leader's start time

    def record_in(self, directory: Path) -> None:
        """Also record groups durably, one file each in ``directory`` (created 0700).

        Raises:
            OSError: the directory cannot be created.
        """
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory = directory

    def add(self, pgid: int) -> None:
        """Record the new group led by ``pgid`` (call right after starting it)."""
        proc = read_proc(pgid)
        start = proc.start if proc is not None else None
        self._groups[pgid] = start
        self._prune(keep=pgid)
        if self.directory is not None:
            path = self.directory / str(pgid)
            tmp = self.directory / f".{pgid}.tmp"
            try:
                tmp.write_text("" if start is None else f"{start}\n")
                os.replace(tmp, path)
            except OSError as exc:  # recording is best effort: the session still runs
                log.warning("cannot record process group %d in %s: %s", pgid, path,
                            exc.strerror or exc)

    def release(self, pgid: int) -> None:
        """The leader was reaped: forget the group if nothing is left in it."""
        if pgid in self._groups and not _group_alive(pgid):
            self._forget(pgid)

    def targets(self) -> list[Target]:
        """What this process recorded, as :class:`Target` values."""
        return [Target(pgid, start) for pgid, start in self._groups.items()]

    def end_all(self, grace: float = END_GRACE) -> None:
        """End every recorded group (blocks up to ``grace``) and drop their records."""
        self._prune()
        targets = self.targets()
        if targets:
            log.info("ending %d leftover session process group(s)", len(targets))
        end(targets, grace=grace)
        for pgid in list(self._groups):
            self._forget(pgid)

    def _prune(self, keep: int | None = None) -> None:
        for pgid in list(self._groups):
            if pgid != keep and not _group_alive(pgid):
                self._forget(pgid)

    def _forget(self, pgid: int) -> None:
        self._groups.pop(pgid, None)
        if self.directory is not None:
            with contextlib.suppress(OSError):
                (self.directory / str(pgid)).unlink()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recorded(directory: Path) -> list[tuple[Path, Target]]:
    """The groups recorded in ``directory`` (by any agent), with their files.

    Files whose name is not a pid are ignored (and left alone).
    """
    out = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    for path in entries:
        if not path.name.isdigit():
            continue
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        out.append((path, Target(int(path.name), int(text) if text.isdigit() else None)))
    return out


# The groups this process started; ssh sessions and scripts record here.
tracked = Groups()
