"""``burrow agent``: run the workspace agent (started by a workspace's template).

Logs go to stderr (the template redirects them to ``agent.log``).  SIGTERM and
SIGINT stop it cleanly: shutdown script, lifecycle ``off``, the sessions'
leftover process groups ended (:mod:`agent.procgroups`), exit 0.

The token comes from ``--token``, ``--token-file`` (what templates use: a
0600 file in the workspace dir, so the token is in no environment) or
``$BURROW_AGENT_TOKEN``.  Every secret variable (:func:`agent.environ.is_secret`:
Terraform's ``TF_*``, token-bearing ``BURROW_*``) is dropped from the
environment at once, so no child sees it.  ``--supervise`` runs the agent
under the watchdog of :mod:`agent.supervise`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from burrow.flags import UsageError, add, add_bool


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < 1e7:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "share")
    return os.path.join(base, "burrow", "agent")


def _joined_token(args: list[str]) -> list[str]:
    """``--token VALUE`` -> ``--token=VALUE``: agent tokens may start with ``-``, which
    argparse would take for an option (templates pass ``--token "$TOKEN"``)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "--token" and i + 1 < len(args):
            out.append("--token=" + args[i + 1])
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


def register(sub: Any) -> None:
    parser = sub.add_parser("agent", help="run the workspace agent (inside a workspace)")
    base = type(parser)

    class AgentParser(base):  # type: ignore[valid-type,misc]
        def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
            if args is not None:
                args = _joined_token(list(args))
            return super().parse_known_args(args, namespace)

    parser.__class__ = AgentParser
    add(parser, "--url", help="coderd's access URL (the template passes it)")
    parser.add_argument("--token", default=None,
                        help="the agent token [$BURROW_AGENT_TOKEN]")
    add(parser, "--token-file", default=None,
        help="read the agent token from this file (not readable by group or others)")
    add(parser, "--run-dir", default=None,
        help="the workspace's run dir: session process groups are recorded in DIR/sessions "
             "so they can be ended even if the agent is killed")
    add_bool(parser, "--supervise",
             help="run the agent under a watchdog that restarts it when it dies and ends "
                  "its sessions' processes")
    add(parser, "--data-dir", default=None,
        help="where the node key and SSH host key persist (default ~/.local/share/burrow/agent)")
    add_bool(parser, "--force-websockets", help="reach the relay over WebSocket only")
    add(parser, "--direct-address", default="127.0.0.1",
        help="address to accept direct tunnel paths on ('' disables)")
    add(parser, "--startup-timeout", default=300.0, type=_seconds,
        help="seconds before the startup script counts as timed out")
    add(parser, "--report-interval", default=15.0, type=_seconds,
        help="seconds between port and stats reports")
    add(parser, "--log-level", default="info", choices=("debug", "info", "warning", "error"),
        help="log verbosity")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("BURROW_AGENT_URL")
    if not url:
        raise UsageError("--url (or $BURROW_AGENT_URL) is required")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url must be http(s)://host[:port], not {url!r}")
    token_file = os.path.abspath(args.token_file) if args.token_file and not args.token \
        else None
    token = args.token or (read_token_file(token_file) if token_file else None) or \
        os.environ.get("BURROW_AGENT_TOKEN")
    if not token:
        raise UsageError("--token, --token-file (or $BURROW_AGENT_TOKEN) is required")
    if args.token:
        _reexec_without_token_in_argv(token)
    # Secrets (the token, Terraform's TF_VAR_*) must not reach children (scripts, shells).
    from agent.environ import scrub
    scrub(os.environ)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_dir = Path(args.run_dir).absolute() if args.run_dir else None
    if args.supervise:
        return _supervise(token, token_file, run_dir)
    if run_dir is not None:
        from agent import procgroups
        from agent.supervise import SESSIONS_DIR
        try:
            procgroups.tracked.record_in(run_dir / SESSIONS_DIR)
        except OSError as exc:
            sys.stderr.write(f"burrow agent: cannot create {run_dir / SESSIONS_DIR}: "
                             f"{exc.strerror or exc}\n")
            return 1
    try:
        return _run_agent(args, url, token)
    finally:
        from agent import procgroups
        procgroups.tracked.end_all()  # what the sessions and scripts left behind


def read_token_file(path: str) -> str:
    """The token in ``path`` (surrounding whitespace stripped).

    Raises:
        UsageError: the file is missing, unreadable, empty, or readable by
            group or others (like ssh with a private key, refuse it).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise UsageError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd) as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o077:
            raise UsageError(f"the token file {path} is readable by others (mode "
                             f"{mode & 0o777:04o}): chmod 600 it")
        token = f.read().strip()
    if not token:
        raise UsageError(f"the token file {path} is empty")
    return token


def _supervise(token: str, token_file: str | None, run_dir: Path | None) -> int:
    """Run this same command without ``--supervise`` under the watchdog."""
    from agent.supervise import supervise

    # (argparse also takes an abbreviation: a child that supervised again would never end)
    args = [a for a in sys.argv[1:] if not (a.startswith("--su") and "--supervise".startswith(a))]
    env = {k: v for k, v in os.environ.items() if k != "BURROW_SUPERVISE"}
    if token_file is not None:
        args.append(f"--token-file={token_file}")  # even if it came from the environment
    else:
        env["BURROW_AGENT_TOKEN"] = token  # the agent drops it from its own environment
    if run_dir is not None:
        args.append(f"--run-dir={run_dir}")
        try:
            run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            sys.stderr.write(f"burrow agent: cannot create {run_dir}: {exc.strerror or exc}\n")
            return 1
    return supervise(args, env, run_dir=run_dir)


def _run_agent(args: argparse.Namespace, url: str, token: str) -> int:
    import trio

    from agent.run import Agent, AgentError, AgentOptions
    from burrow.access import speedtest

    options = AgentOptions(
        url=url, token=token,
        data_dir=Path(args.data_dir or _default_data_dir()),
        force_websockets=args.force_websockets or
        os.environ.get("BURROW_FORCE_WEBSOCKETS", "").lower() in ("1", "true", "yes", "on"),
        direct_address=args.direct_address,
        startup_timeout=args.startup_timeout,
        report_interval=args.report_interval,
        extra_services={"speedtest": speedtest.serve},
    )
    agent = Agent(options)

    async def main() -> None:
        started = False
        async with trio.open_nursery() as nursery:
            async def on_signals() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        logging.getLogger("burrow.agent").info(
                            "%s: shutting down", signal.Signals(signum).name)
                        if started and not agent.shutdown.is_set():
                            agent.shutdown.set()  # run() stops cleanly, then returns
                        else:
                            nursery.cancel_scope.cancel()

            async def run_agent(task_status: trio.TaskStatus[None]) -> None:
                await agent.run(task_status=task_status)
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signals)
            await nursery.start(run_agent)
            started = True

    try:
        trio.run(main)
    except BaseException as exc:  # unwrapped to one line for the user
        leaves = _leaves(exc)
        agent_errors = [e for e in leaves if isinstance(e, AgentError)]
        if agent_errors:
            sys.stderr.write(f"burrow agent: {agent_errors[0]}\n")
            return 1
        if leaves and all(isinstance(e, KeyboardInterrupt) for e in leaves):
            return 130
        raise
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def _reexec_without_token_in_argv(token: str) -> None:
    """Run again (same pid) with the token in the environment instead of the command line.

    Anyone on the machine can read a process's command line (``ps``); only its
    user can read its environment.  Templates may pass ``--token``: this
    moves it out of sight at once.  Does nothing if argv cannot be rewritten.
    """
    argv = sys.argv[1:]
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--token" and i + 1 < len(argv):
            skip = True
            continue
        if arg.startswith("--token="):
            continue
        out.append(arg)
    if out == argv or "agent" not in out:
        return
    env = dict(os.environ)
    env["BURROW_AGENT_TOKEN"] = token
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "burrow.cli", *out], env)  # noqa: S606
