"""``burrow agent``: run the workspace agent (started by a workspace's template).

Logs go to stderr (the template redirects them to ``agent.log``).  SIGTERM and
SIGINT stop it cleanly: shutdown script, lifecycle ``off``, exit 0.
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
    token = args.token or os.environ.get("BURROW_AGENT_TOKEN")
    if not url:
        raise UsageError("--url (or $BURROW_AGENT_URL) is required")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url must be http(s)://host[:port], not {url!r}")
    if not token:
        raise UsageError("--token (or $BURROW_AGENT_TOKEN) is required")
    if args.token:
        _reexec_without_token_in_argv(token)
    # The token must not reach children (scripts, shells).
    os.environ.pop("BURROW_AGENT_TOKEN", None)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

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
