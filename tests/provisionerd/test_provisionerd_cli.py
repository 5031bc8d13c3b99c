"""``burrow provisionerd start``: usage errors are one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

# The provisionerd subcommand alone (the whole CLI imports every other command).
CLI = (
    "import sys; from burrow.flags import Parser, UsageError; "
    "from burrow.commands import provisionerd as m; "
    "p = Parser(prog='burrow'); s = p.add_subparsers(dest='command'); m.register(s); "
    "a = p.parse_args(sys.argv[1:])\n"
    "try:\n    sys.exit(a.run(a))\n"
    "except UsageError as e:\n    sys.stderr.write(f'burrow provisionerd: {e}\\n'); sys.exit(2)\n"
)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI, "provisionerd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["start", "--psk", "k"], "--url"),
        (["start", "--url", "http://127.0.0.1:1"], "--psk"),
        (["start", "--url", "ftp://x", "--psk", "k"], "http"),
        (["start", "--url", "http://x", "--psk", "k", "--tag", "novalue"], "key=value"),
        (["start", "--heartbeat-interval", "-1"], "positive"),
        (["start", "--bogus"], "--bogus"),
        ([], "COMMAND"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], needle: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_help_lists_flags_with_env_names() -> None:
    proc = run("start", "--help")
    assert proc.returncode == 0
    for flag in ("--url", "--psk", "--tag", "--workdir", "--provider-mirror-dir"):
        assert flag in proc.stdout
    assert "$BURROW_PSK" in proc.stdout
    assert "$BURROW_TAG" in proc.stdout


def test_unreachable_server_keeps_retrying_until_killed() -> None:
    # No server on the port: the daemon retries with backoff instead of exiting.
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "provisionerd", "start", "--url", "http://127.0.0.1:9",
         "--psk", "k"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert "connect failed" in err
    assert "Traceback" not in err
