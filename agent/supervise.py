"""``burrow agent --supervise``: the watchdog that keeps a workspace's agent running.

Why a watchdog in the workspace, and not coderd marking the agent unhealthy:
coderd already shows a dead agent as ``disconnected``, but it cannot act on
it.  coderd has no way into a workspace but the agent itself (the agent dials
out; coderd never runs commands in a workspace, and what a workspace *is* --
a process tree, a container, a VM -- is the template's business).  The
template's start step runs once per build.  So only something that lives in
the workspace beside the agent can start a new one, and only something that
outlives the agent can end the processes of one that was SIGKILLed (nothing
in the agent runs then).  The watchdog is small, does no network I/O and
holds no secrets beyond what it hands the agent, so it has little reason to
die itself.  (Coder relies on the workspace's init system, e.g. systemd's
``Restart=``, for the same job; a process-tree workspace has none.)

Theory of operation
-------------------
The supervisor forks the agent (``burrow agent`` with the same flags, minus
``--supervise``) into the supervisor's process group -- the template starts the
supervisor with ``setsid`` and SIGKILLs that group as a last resort, which
ends both; a stop is a SIGTERM to the supervisor alone -- with a
parent-death signal (SIGTERM): if the supervisor is killed, the agent stops
cleanly instead of running unwatched.  The supervisor is a child subreaper
(``PR_SET_CHILD_SUBREAPER``): every orphan below it (session processes of a
dead agent, double-forked daemons of a session) becomes its child, so it can
reap them and find them all by walking its descendants.

One thread, no event loop: the signals it acts on (SIGCHLD, SIGTERM, SIGINT,
SIGHUP) are blocked and taken with ``sigtimedwait``, which also sleeps until
the next timer.  States:

* (start) -- session groups still recorded in the run dir belong to an
  earlier agent that nothing ended: they are ended before the first agent.
* RUNNING -- the agent runs.  On its death (SIGCHLD, reaped): every
  descendant and every recorded session group (:mod:`agent.procgroups`) gets
  SIGHUP and SIGTERM at once and SIGKILL ``session_grace`` later; the
  :class:`RestartBudget` then says how long to back off, or to give up.
  An agent that exits 0 on its own was stopped on purpose: no restart.
* BACKOFF -- waiting to start the next agent; a stop signal ends it.
* STOPPING -- a stop signal arrived: the agent got SIGTERM (it runs its
  shutdown script and hangs up its sessions) and SIGKILL after
  ``stop_timeout``; once it is gone, the leftovers are ended as above
  (blocking this time) and the supervisor exits 0.  A second stop signal
  kills the agent at once.
* GAVE UP -- too many deaths in the window: the leftovers are ended, the
  reason is logged, exit 1.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent import procgroups
from agent.procgroups import Target

log = logging.getLogger("burrow.agent.supervise")

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
WATCHED = {signal.SIGCHLD, *STOP_SIGNALS}
# The current agent's pid, in the run dir (the template's agent.pid is the supervisor).
CHILD_PID_FILE = "agent.child.pid"
SESSIONS_DIR = "sessions"
# How often leftovers being ended are looked at (to drop their records once gone).
PENDING_POLL = 0.1


@dataclass(frozen=True)
class RestartPolicy:
    """How eagerly a dead agent is restarted.

    Attributes:
        max_restarts: deaths tolerated within ``window``; one more and the
            supervisor gives up.
        window: seconds over which deaths are counted.
        first_delay: back-off before the first restart, doubled on each
            death up to ``max_delay``.
        max_delay: longest back-off.
        stable_after: an agent that ran this long resets the back-off.
    """

    max_restarts: int = 5
    window: float = 60.0
    first_delay: float = 0.5
    max_delay: float = 10.0
    stable_after: float = 30.0


class RestartBudget:
    """Sans-IO: given each death, the delay before the restart or None (give up)."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.deaths: deque[float] = deque()
        self._delay = policy.first_delay

    def on_death(self, now: float, ran_for: float) -> float | None:
        p = self.policy
        if ran_for >= p.stable_after:
            self._delay = p.first_delay
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > p.window:
            self.deaths.popleft()
        if len(self.deaths) > p.max_restarts:
            return None
        delay, self._delay = self._delay, min(self._delay * 2, p.max_delay)
        return delay


def describe_status(status: int) -> str:
    """A wait status as words: ``exit status 3``, ``killed by SIGKILL``."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _prctl() -> Callable[[int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.prctl
    except (OSError, AttributeError):
        return None

    def call(option: int, arg: int) -> int:
        return int(fn(option, arg, 0, 0, 0))

    return call


@dataclass
class _PendingKill:
    due: float
    targets: list[Target]
    files: list[tuple[Path, Target]] = field(default_factory=list)


class Supervisor:
    """One watchdog (see the module docstring).

    Args:
        argv: the agent's command line (``argv[0]`` is the executable's path).
        env: the agent's environment.
        run_dir: the workspace's run dir (recorded session groups in
            ``sessions/``, the agent's pid in ``agent.child.pid``); None for
            none: only descendants are ended then.
        policy: restart limits.
        session_grace: seconds between SIGHUP/SIGTERM and SIGKILL for leftovers.
        stop_timeout: seconds a stopping agent gets before SIGKILL.
        clock: monotonic clock.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], *,
                 run_dir: Path | None = None, policy: RestartPolicy | None = None,
                 session_grace: float = procgroups.END_GRACE, stop_timeout: float = 75.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.run_dir = run_dir
        self.budget = RestartBudget(policy or RestartPolicy())
        self.session_grace = session_grace
        self.stop_timeout = stop_timeout
        self.clock = clock
        self.agent_pid: int | None = None
        self.agent_started = 0.0
        self.starts = 0
        self.stopping = False
        self.exit_code: int | None = None
        self._restart_at: float | None = None
        self._kill_agent_at: float | None = None
        self._pending: list[_PendingKill] = []
        self._prctl = _prctl()

    # -- the loop --------------------------------------------------------

    def run(self) -> int:
        """Supervise until stopped (0) or given up (1)."""
        if self._prctl is not None and self._prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
            log.warning("cannot become a child subreaper: orphaned session processes of a "
                        "dead agent escape the supervisor")
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        # Groups recorded by an earlier agent that nothing ended (a failed stop).
        self._end_leftovers(wait=True)
        self._spawn()
        while self.exit_code is None:
            info = signal.sigtimedwait(WATCHED, self._timeout())
            if info is not None and info.si_signo in STOP_SIGNALS:
                self._on_stop_signal(info.si_signo)
            self._reap()
            self._on_timers()
        return self.exit_code

    def _timeout(self) -> float:
        due = [t for t in (self._restart_at, self._kill_agent_at) if t is not None]
        if self._pending:
            due.append(self.clock() + PENDING_POLL)  # done early once all are gone
        if not due:
            return 3600.0
        return max(0.0, min(due) - self.clock())

    def _on_timers(self) -> None:
        now = self.clock()
        table = procgroups.process_table() if self._pending else []
        for pending in list(self._pending):
            if pending.due <= now or not any(procgroups.alive(t, table)
                                             for t in pending.targets):
                self._pending.remove(pending)
                self._kill(pending)
        if self._kill_agent_at is not None and now >= self._kill_agent_at:
            self._kill_agent_at = None
            if self.agent_pid is not None:
                log.warning("agent still running %.0f s after SIGTERM: SIGKILL",
                            self.stop_timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.agent_pid, signal.SIGKILL)
        if self._restart_at is not None and now >= self._restart_at and not self.stopping:
            self._restart_at = None
            self._spawn()

    # -- events ----------------------------------------------------------

    def _on_stop_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stopping:
            if self.agent_pid is not None:
                log.info("%s again: killing the agent", name)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.agent_pid, signal.SIGKILL)
            return
        self.stopping = True
        self._restart_at = None
        if self.agent_pid is None:
            log.info("%s: stopping (no agent running)", name)
            self._finish(0)
            return
        log.info("%s: stopping the agent (pid %d)", name, self.agent_pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.agent_pid, signal.SIGTERM)
        self._kill_agent_at = self.clock() + self.stop_timeout

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.agent_pid:
                self._on_agent_exit(status)

    def _on_agent_exit(self, status: int) -> None:
        how = describe_status(status)
        now = self.clock()
        self.agent_pid = None
        self._kill_agent_at = None
        self._remove_child_pid_file()
        if self.stopping:
            log.info("agent stopped (%s)", how)
            self._finish(0)
            return
        if os.waitstatus_to_exitcode(status) == 0:
            log.info("agent exited on its own (%s): not restarting", how)
            self._finish(0)
            return
        delay = self.budget.on_death(now, now - self.agent_started)
        if delay is None:
            p = self.budget.policy
            log.error("agent died %d times within %.0f s (last: %s): giving up",
                      len(self.budget.deaths), p.window, how)
            self._finish(1)
            return
        log.warning("agent died (%s); ending its session processes; restarting in %.1f s",
                    how, delay)
        self._end_leftovers(wait=False)
        self._restart_at = now + delay

    # -- actions ---------------------------------------------------------

    def _spawn(self) -> None:
        parent = os.getpid()
        prctl = self._prctl
        pid = os.fork()
        if pid == 0:  # the child: only async-signal-safe-ish work until exec
            try:
                if prctl is not None:
                    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
                if os.getppid() != parent:
                    os._exit(0)  # the supervisor died before the death signal was set
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                os.execve(self.argv[0], self.argv, self.env)  # noqa: S606
            finally:
                os._exit(127)
        self.agent_pid = pid
        self.agent_started = self.clock()
        self.starts += 1
        log.info("agent started (pid %d, start %d)", pid, self.starts)
        if self.run_dir is not None:
            path = self.run_dir / CHILD_PID_FILE
            try:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(f"{pid}\n")
                os.replace(tmp, path)
            except OSError as exc:
                log.warning("cannot write %s: %s", path, exc.strerror or exc)

    def _remove_child_pid_file(self) -> None:
        if self.run_dir is not None:
            with contextlib.suppress(OSError):
                (self.run_dir / CHILD_PID_FILE).unlink()

    def _leftovers(self) -> tuple[list[Target], list[tuple[Path, Target]]]:
        table = procgroups.process_table()
        targets = [Target(p.pid, p.start, group=False)
                   for p in procgroups.descendants(os.getpid(), table)
                   if p.pid != self.agent_pid]
        files = procgroups.recorded(self.run_dir / SESSIONS_DIR) if self.run_dir else []
        return targets + [t for _, t in files], files

    def _end_leftovers(self, *, wait: bool) -> None:
        targets, files = self._leftovers()
        if not targets:
            self._drop_files(files)
            return
        log.info("ending %d leftover process(es) and group(s) of the agent's sessions",
                 len(targets))
        if wait:
            procgroups.end(targets, grace=self.session_grace)
            self._reap()
            self._drop_files(files)
            return
        for sig in procgroups.POLITE_SIGNALS:
            procgroups.send(targets, sig)
        self._pending.append(_PendingKill(self.clock() + self.session_grace, targets, files))

    def _kill(self, pending: _PendingKill) -> None:
        procgroups.send(pending.targets, signal.SIGKILL)
        self._drop_files(pending.files)

    def _drop_files(self, files: list[tuple[Path, Target]]) -> None:
        for path, target in files:
            try:
                text = path.read_text().strip()
            except OSError:
                continue
            if text == ("" if target.start is None else str(target.start)):
                with contextlib.suppress(OSError):
                    path.unlink()  # not re-recorded (pid reused) since we read it

    def _finish(self, code: int) -> None:
        for pending in self._pending:
            self._kill(pending)
        self._pending.clear()
        self._end_leftovers(wait=True)
        self.exit_code = code


def supervise(agent_args: Sequence[str], env: Mapping[str, str], *,
              run_dir: Path | None) -> int:
    """Run ``burrow <agent_args>`` under a :class:`Supervisor`; its exit code."""
    argv = [sys.executable, "-m", "burrow.cli", *agent_args]
    return Supervisor(argv, env, run_dir=run_dir).run()
