"""Smoke test of ``python -m bench ssh``: sshd, burrow relay, burrow direct, asyncssh on TCP.

Tiny sizes (2 MiB, 20 echoes, one run); asserts every row is there with
positive numbers, ratios against the sshd row, and that the burrow rows went
over the path they are named after -- never a speed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ROWS = ["sshd", "burrow relay", "burrow direct", "asyncssh on TCP"]


@pytest.mark.slow
def test_bench_ssh_runs_every_row_and_reports_json() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "ssh", "--json", "--mib", "2", "--rtt-count", "20",
         "--runs", "1"],
        capture_output=True, text=True, timeout=170, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert [r["name"] for r in report["results"]] == ROWS
    assert report["paths"] == {"relay": "relay", "direct": "direct"}
    assert report["paths_after"] == report["paths"]
    assert "burrow agent" in report["agent"]
    for r in report["results"]:
        for key in ("upload_mb_s", "download_mb_s", "rtt_p50_us", "connect_ms"):
            assert r[key] > 0, (r["name"], key)
        assert r["rtt_p99_us"] >= r["rtt_p50_us"]
        assert r["kex"] != "?"
        assert r["shell"] == report["results"][0]["shell"] != ""
        for key in ("x_upload", "x_download", "x_rtt_p50", "x_connect"):
            assert r[key] > 0
    sshd = report["results"][0]
    assert sshd["x_upload"] == sshd["x_download"] == sshd["x_rtt_p50"] == sshd["x_connect"] == 1


@pytest.mark.parametrize("flag", [["--mib", "0"], ["--runs", "-2"], ["--rtt-count", "x"]])
def test_bench_ssh_rejects_bad_flags(flag: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "ssh", *flag],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 2
    assert flag[0] in proc.stderr
    assert "Traceback" not in proc.stderr
