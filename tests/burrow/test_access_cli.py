"""Access commands: usage mistakes are one line + exit 2, no session is one line + exit 1;
netcheck's probes against a live and a dead region."""

from __future__ import annotations

import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from peer.latency import home, measure_all
from peer.relaymap import Region
from tests.burrow.server_proc import cli_env


def cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(tmp, home=tmp)
    return subprocess.run([sys.executable, "-m", "burrow.cli", *args], capture_output=True,
                          text=True, timeout=30, env=env, check=False,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("args", "says"), [
    (["port-forward", "dev"], "at least one --tcp"),
    (["port-forward", "dev", "--tcp", "80:"], "expected LOCAL[:REMOTE]"),
    (["port-forward", "dev", "--tcp", "9000-9002:80"], "local range has 3 ports"),
    (["port-forward", "dev", "--tcp", "8080", "--tcp", "8080:81"], "already used"),
    (["ping", "dev", "-n", "0"], "-n must be >= 1"),
    (["speedtest", "dev", "--size", "0"], "--size must be"),
    (["netcheck", "--count", "0"], "--count must be"),
    (["ssh", "--stdio", "dev", "uname"], "--stdio takes no command"),
    (["config-ssh", "--host-prefix", "a b"], "host prefix"),
    (["ping"], "the following arguments are required"),
])
def test_usage_errors_are_one_line_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    proc = cli(tmp_path, *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert says in lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize("args", [
    ["ssh", "--stdio", "dev"], ["ssh", "dev"], ["port-forward", "dev", "--tcp", "8080"],
    ["ping", "dev"], ["speedtest", "dev"], ["netcheck"], ["config-ssh"],
])
def test_not_logged_in_is_one_line_exit_1(tmp_path: Path, args: list[str]) -> None:
    proc = cli(tmp_path, *args)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr.strip().splitlines() == [
        f"burrow {args[0]}: not logged in: run `burrow login <url>` first"]
    assert proc.stdout == ""


async def test_netcheck_measures_live_regions_and_records_dead_ones() -> None:
    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            assert data.startswith(b"GET /derp/latency-check HTTP/1.1\r\n")
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again before the probe: refused
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        regions = (Region(1, "dead", "d", f"http://127.0.0.1:{dead}"),
                   Region(2, "live", "l", f"http://127.0.0.1:{port}"))
        with trio.fail_after(10):
            results = await measure_all(regions, count=2, timeout=2)
        nursery.cancel_scope.cancel()
    assert results[0].error
    assert results[0].median is None
    assert not results[1].error
    assert len(results[1].samples) == 2
    best = home(results)
    assert best is not None
    assert best.region.code == "live"
