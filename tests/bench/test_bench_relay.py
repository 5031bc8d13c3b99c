"""Smoke test of ``python -m bench relay``: it runs end to end and reports every path.

No speed assertions (numbers go in the report, not in tests).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_relay_runs_and_reports_json() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "relay", "--json", "--seconds", "0.2",
         "--rtt-count", "50", "--idle-clients", "20"],
        capture_output=True, text=True, timeout=110, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    paths = [r["path"] for r in report["results"]]
    assert paths[0] == "direct TCP"
    assert "burrow DERP, raw TCP" in paths
    assert "naive threaded DERP relay" in paths
    measured = [r for r in report["results"] if r["rtt_p50_us"] is not None]
    for r in measured:
        assert r["rtt_p50_us"] > 0
        assert r["rtt_p99_us"] >= r["rtt_p50_us"]
        assert r["throughput_mbit"] > 0
    assert report["memory"][0]["clients"] == 20


def test_bench_rejects_bad_flags() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "relay", "--seconds", "-1"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 2
    assert "--seconds" in proc.stderr
    assert "Traceback" not in proc.stderr
