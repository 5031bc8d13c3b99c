"""Smoke test of ``python -m bench control``: it runs end to end on both backends.

Tiny sizes (3 clients, 0.3 s per route, one build); asserts the report's rows
and that every figure is a positive number, never a speed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_control_runs_on_both_backends_and_reports_json() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "control", "--json", "--backend", "both",
         "--clients", "3", "--seconds", "0.3", "--builds", "1", "--daemons", "1"],
        capture_output=True, text=True, timeout=170, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert set(report["backends"]) == {"sqlite", "postgres"}
    assert report["terraform_alone_p50_s"] > 0
    assert report["terraform_as_provisionerd_p50_s"] > 0
    for result in report["backends"].values():
        assert set(result["api"]) == {"GET /workspaces", "GET manifest"}
        for row in result["api"].values():
            assert row["requests"] > 0
            assert row["errors"] == 0
            assert row["req_s"] > 0
            assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert len(result["dispatch_ms"]) == 1
        assert result["dispatch_p50_ms"] >= 0
        assert 0 < result["build_server_p50_s"] <= result["build_client_p50_s"] + 1
        assert result["build_x_terraform"] > 0


def test_bench_control_table_has_every_row() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "control", "--backend", "sqlite",
         "--clients", "2", "--seconds", "0.2", "--builds", "1", "--daemons", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for needle in ("sqlite    GET /workspaces", "sqlite    GET manifest", "dispatch",
                   "x terraform alone", "terraform init+apply alone"):
        assert needle in out, out


@pytest.mark.parametrize("flag", [["--clients", "0"], ["--seconds", "-1"],
                                  ["--backend", "mysql"], ["--builds", "x"]])
def test_bench_control_rejects_bad_flags(flag: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "control", *flag],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 2
    assert flag[0] in proc.stderr
    assert "Traceback" not in proc.stderr
