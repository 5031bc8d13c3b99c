"""``burrow relay`` as a real process: start-up line, env defaults, usage errors,
clean shutdown on SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from derp.client import DerpClient
from derp.keys import generate_private_key

sys.path.insert(0, str(Path(__file__).parent))
from relay_procs import RelayProcess


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "burrow.cli", "relay", *args],
        capture_output=True, text=True, timeout=60, check=False, env=full,
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--listen", "nonsense"], "host:port"),
        (["--listen", "127.0.0.1:99999"], "port"),
        (["--listen", "127.0.0.1:0", "--mesh-key-file", "/nonexistent/key"], "mesh key"),
        (["--listen", "127.0.0.1:0", "--tls-cert", "/etc/hostname"], "tls-key"),
        (["--listen", "127.0.0.1:0", "--mesh-with", "http://127.0.0.1:1"], "mesh key"),
        (["--log-level", "loud"], "log-level"),
        (["--listen", "127.0.0.1:0", "--mesh-ca-file", "/nonexistent/ca.pem"], "mesh-ca-file"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_flags_are_one_line_exit_2(args: list[str], needle: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_mesh_key_file_contents(tmp_path: Path) -> None:
    key = tmp_path / "mesh.key"
    key.write_text("not hex and not 32 bytes\n")
    proc = run("--listen", "127.0.0.1:0", "--mesh-key-file", str(key))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "32 bytes" in proc.stderr


def test_bad_env_value_is_one_line_exit_2() -> None:
    proc = run(env={"BURROW_LOG_LEVEL": "loud"})
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_env_defaults_and_clean_shutdown(sig: int) -> None:
    relay = RelayProcess(env={"BURROW_LISTEN": "127.0.0.1:0", "BURROW_FORCE_WEBSOCKETS": "1"})
    try:
        assert relay.url.startswith("http://127.0.0.1:")
        client = DerpClient(relay.url, generate_private_key())
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(client.run)
                assert client.transport == "derp"
                nursery.cancel_scope.cancel()
        rc = await trio.to_thread.run_sync(relay.stop, sig)
        assert rc == 0
        relay.kill()
        err = "".join(relay.stderr_lines)
        assert "Traceback" not in err
        assert "shutting down" in err
    finally:
        relay.kill()
