"""The tunnel benchmark runs end to end (tiny durations; no speed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_tunnel_smoke() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.tunnel", "--seconds", "0.1", "--rtt-count", "10", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert [r["path"] for r in report["tunnel"]] == ["tunnel via relay", "tunnel via direct"]
    for row in report["tunnel"]:
        assert row["throughput_mbit"] > 0
        assert row["throughput_8_mbit"] > 0
        assert row["rtt_p50_us"] > 0


def test_bench_tunnel_via_bench_main_rejects_bad_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "tunnel", "--rtt-count", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--rtt-count" in out.stderr
    assert "Traceback" not in out.stderr
