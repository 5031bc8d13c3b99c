"""The CLI frame: usage errors are one line with exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "burrow.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unknown_subcommand_is_one_line_exit_2() -> None:
    proc = run("no-such-command")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_unknown_flag_is_one_line_exit_2() -> None:
    proc = run("relay", "--no-such-flag")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "--no-such-flag" in proc.stderr


def test_help_lists_commands() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    assert "relay" in proc.stdout
