"""Smoke test of ``python -m bench wan --quick``: every row of every table, with numbers.

One RTT, 2 MiB, 10 echoes; asserts the tables a person reads have every row,
each with numbers and crossing the link it is named after -- never a speed.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

NUM = r"(\d+(?:\.\d+)?)"
PATHS = {"plain TCP": "echo", "relay, 1 stream": "relay", "relay, 8 streams": "relay",
         "direct, 1 stream": "direct", "direct, 8 streams": "direct"}
SCP = {"sshd": "sshd", "burrow relay": "relay", "burrow direct": "direct"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_wan_quick_reports_every_row() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "wan", "--quick", "--rtts", "20"],
        capture_output=True, text=True, timeout=280, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "bench wan: RTT 20 ms" in proc.stderr  # progress goes to stderr
    for path, via in PATHS.items():
        row = re.search(rf"^\s+20  {re.escape(path)}\s+{NUM} +{NUM} +{NUM} +{NUM}  (\S+)$",
                        out, re.M)
        assert row, (path, out)
        assert all(float(row.group(i)) > 0 for i in range(1, 5)), row.group(0)
        assert row.group(5) == via, row.group(0)
    assert re.search(r"^\s+20  plain TCP\s+\S+\s+\S+\s+1\.00\s+1\.00  echo$", out, re.M)
    echo = re.search(rf"^\s+20\s+{NUM}/{NUM}\s+{NUM}/{NUM}\s+(-?[\d.]+)\s+{NUM}/{NUM}\s+"
                     rf"(-?[\d.]+)$", out, re.M)
    assert echo, out
    link_p50, link_p99, relay_p50, relay_p99 = (float(echo.group(i)) for i in range(1, 5))
    assert 0 < link_p50 <= link_p99
    assert 0 < relay_p50 <= relay_p99
    assert link_p50 >= 20  # the link's RTT is at least the configured one
    for target, via in SCP.items():
        row = re.search(rf"^\s+20  {re.escape(target)}\s+{NUM} +{NUM} +{NUM} +{NUM}  (\S+)$",
                        out, re.M)
        assert row, (target, out)
        assert all(float(row.group(i)) > 0 for i in range(1, 5)), row.group(0)
        assert row.group(5) == via, row.group(0)


@pytest.mark.parametrize("flags", [["--rtts", "x"], ["--rtts", "-5"], ["--mib", "0"],
                                   ["--rate-mbit", "-1"], ["--jitter-ms", "-1"]])
def test_bench_wan_rejects_bad_flags(flags: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "wan", *flags],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert flags[0] in proc.stderr
    assert "Traceback" not in proc.stderr
