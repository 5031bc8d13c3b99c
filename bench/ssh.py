"""Quick benchmark of the agent's SSH server paths (a script, not a test).

    .venv/bin/python -m agent.bench_ssh [--mib 256] [--runs 5] [--no-sshd]

OpenSSH's client against, on loopback:

* ``stream``: :meth:`SSHServer.serve_stream` on a trio stream (the agent's
  path: asyncssh on the custom transport);
* ``socket``: asyncssh's own asyncio socket transport (``serve_socket``);
* ``socketpair``: the alternative bridge -- trio stream <-> socketpair, two
  copy loops, asyncssh's transport on the other end;
* ``sshd``: Debian's OpenSSH server on a high port with its own config and
  host key (when installed), the baseline.

All four run the same shell so shell start-up cost is equal.  Prints MB/s for
an upload and a download of ``--mib`` MiB and the median wall time of
``ssh host true``.  Belongs in bench/ once the harness there exists.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import trio

from agent.ssh_adapter import SSHServer, asyncio_loop

CLIENT = [
    "ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
]


async def _copy(src: trio.abc.ReceiveStream, dst: trio.abc.SendStream) -> None:
    try:
        while data := await src.receive_some(256 * 1024):
            await dst.send_all(data)
        if isinstance(dst, trio.abc.HalfCloseableStream):
            await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _serve_socketpair(server: SSHServer, stream: trio.SocketStream) -> None:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    inner = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    async with stream, inner, trio.open_nursery() as nursery:
        nursery.start_soon(_copy, stream, inner)
        nursery.start_soon(_copy, inner, stream)
        await server.serve_socket(b)
        nursery.cancel_scope.cancel()


async def _serve_raw_socket(server: SSHServer, stream: trio.SocketStream) -> None:
    sock = socket.socket(fileno=stream.socket.detach())
    await server.serve_socket(sock)


async def _listen(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


def _start_sshd(tmp: Path, shell_user_key: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).exists():
        return None
    host_key = tmp / "sshd_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {shell_user_key}.pub\nPermitRootLogin yes\nStrictModes no\n"
        f"UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PidFile {tmp}/sshd.pid\nSubsystem sftp /usr/lib/openssh/sftp-server\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


async def _time(argv: list[str], stdin: int | None = None) -> float:
    t0 = time.perf_counter()
    with trio.fail_after(600):
        await trio.run_process(argv, stdin=stdin, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


async def _download(base: list[str], size: int) -> float:
    """MB/s from the first byte to the last, so session set-up is excluded."""
    proc = await trio.lowlevel.open_process(
        [*base, f"head -c {size} /dev/zero"], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    got = 0
    first = 0.0
    with trio.fail_after(600):
        async with proc.stdout:
            while data := await proc.stdout.receive_some(1 << 20):
                if not got:
                    first = time.perf_counter()
                got += len(data)
        await proc.wait()
    return got / (time.perf_counter() - first) / 1e6


async def _upload(base: list[str], size: int) -> float:
    """MB/s as the remote ``dd`` sees it (it starts after the shell is up)."""
    command = f"head -c {size} /dev/zero | {shlex.join(base)} 'dd of=/dev/null bs=1M'"
    with trio.fail_after(600):
        result = await trio.run_process(["sh", "-c", command], capture_stderr=True)
    match = re.search(rb"copied, ([0-9.]+) s", result.stderr)
    if match is None:
        raise RuntimeError(f"no dd summary in {result.stderr!r}")
    return size / float(match.group(1)) / 1e6


async def _echo_rtt(base: list[str], rounds: int = 500) -> tuple[float, float]:
    """64-byte ping-pong through ``cat`` on an established session: p50, p99 in µs."""
    proc = await trio.lowlevel.open_process(
        [*base, "cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    payload = b"k" * 64
    samples: list[float] = []
    with trio.fail_after(120):
        for i in range(rounds + 20):
            t0 = time.perf_counter()
            await proc.stdin.send_all(payload)
            got = 0
            while got < len(payload):
                got += len(await proc.stdout.receive_some(65536))
            if i >= 20:  # warm-up rounds excluded
                samples.append((time.perf_counter() - t0) * 1e6)
        await proc.stdin.aclose()
        await proc.wait()
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


async def _measure_rows(
    rows: list[tuple[str, int, list[str]]], key: Path, mib: int, runs: int, cipher: str
) -> list[str]:
    """Each repetition visits every row in turn, so background load hits all alike."""
    size = mib * 1024 * 1024
    results: dict[str, dict[str, list[float]]] = {
        name: {"true": [], "up": [], "down": [], "p50": [], "p99": []} for name, _, _ in rows
    }
    for rep in range(runs):
        for name, port, extra in rows:
            base = [*CLIENT, *extra, "-i", str(key), "-p", str(port), "-c", cipher,
                    "root@127.0.0.1"]
            r = results[name]
            r["true"].append(await _time([*base, "true"]))
            if rep < 3:
                r["up"].append(await _upload(base, size))
                r["down"].append(await _download(base, size))
                p50, p99 = await _echo_rtt(base)
                r["p50"].append(p50)
                r["p99"].append(p99)
    lines = []
    for name, r in results.items():
        m = {k: statistics.median(v) for k, v in r.items()}
        lines.append(
            f"{name:<12} {cipher:<30} up {m['up']:6.1f} MB/s  down {m['down']:6.1f} MB/s  "
            f"true {m['true'] * 1000:6.1f} ms  rtt p50/p99 {m['p50']:4.0f}/{m['p99']:5.0f} us"
        )
    return lines


async def main(mib: int, runs: int, use_sshd: bool, shell: str) -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        key = tmp / "client_key"
        await trio.run_process(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        server = SSHServer(tmp / "host_key", shell=shell, workdir=tmp)
        sshd = _start_sshd(tmp, key) if use_sshd else None
        try:
            async with asyncio_loop(), trio.open_nursery() as nursery:
                ports = {
                    "stream": await _listen(nursery, server.serve_stream),
                    "socket": await _listen(nursery, partial(_serve_raw_socket, server)),
                    "socketpair": await _listen(nursery, partial(_serve_socketpair, server)),
                }
                rows: list[tuple[str, int, list[str]]] = [(n, p, []) for n, p in ports.items()]
                if sshd is not None:
                    rows.append(("sshd", sshd[1], []))
                    rows.append(("sshd-x25519", sshd[1], ["-o", "KexAlgorithms=curve25519-sha256"]))
                print(f"{mib} MiB each way and 500 echo rounds (medians of 3 runs), "
                      f"median of {runs} x 'ssh host true', "
                      f"shell {shell}")
                for cipher in ("chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com"):
                    for line in await _measure_rows(rows, key, mib, runs, cipher):
                        print(line, flush=True)
                nursery.cancel_scope.cancel()
        finally:
            if sshd is not None:
                sshd[0].terminate()
                sshd[0].wait()


def main_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-sshd", action="store_true")
    parser.add_argument("--shell", default="/bin/bash", help="the shell every server runs")
    args = parser.parse_args(argv)
    if shutil.which("ssh") is None:
        sys.exit("bench ssh: OpenSSH client (ssh) not found")
    trio.run(main, args.mib, args.runs, not args.no_sshd, args.shell)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_cli(sys.argv[1:]))
