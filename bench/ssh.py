"""``python -m bench ssh``: OpenSSH's client into burrow, beside OpenSSH's own server.

One run, all on loopback, OpenSSH's ``ssh`` client against:

* ``sshd``: Debian's OpenSSH server (``/usr/sbin/sshd``) on a free high port
  with its own config, host key and authorized key, run as root without PAM:
  the baseline every ratio is taken against;
* ``burrow relay``: ``ssh burrow.<ws>`` through the ``ProxyCommand`` that
  ``burrow config-ssh`` writes (``burrow ssh --stdio``), a real ``burrow
  server`` (coordinator + embedded DERP relay), the tunnel over the relay;
* ``burrow direct``: the same, to a second workspace whose agent advertises a
  direct endpoint on loopback, so the tunnel takes the direct path;
* ``asyncssh on TCP``: the agent's SSH server (``agent.ssh_adapter``) on a
  plain loopback socket, no tunnel, no ProxyCommand: attribution only.

The agents are real ``burrow agent`` processes, one per workspace (the
relay one with ``--direct-address ''``), started by this bench with the
token the workspace's build wrote to a file (the template is a one-resource
Terraform config run by the server's built-in provisioner), stopped by PID.
The ``asyncssh on TCP`` row is a ``_tcp`` child process serving
``agent.ssh_adapter.SSHServer`` on a loopback socket.

Measured per row: upload and download of ``--mib`` MiB (upload from when ssh
starts reading its stdin to when the remote ``cat`` has taken every byte,
download from the first byte to the last, so session set-up is excluded),
a 64-byte echo through ``cat`` on an established session (RTT p50/p99 after
warm-up), and the wall time of ``ssh <host> true``.  Each
repetition visits every row in turn, so the shared machine's background load
hits them alike; medians are reported, with ratios to sshd.

Shell: every server runs the user's login shell (root: ``/bin/bash``) with
``SHLVL=1`` in its environment (sshd: ``SetEnv``; burrow: the agent's
manifest ``env``), so bash does not source ``~/.bashrc`` for SSH sessions on
any of them (root's rc runs ``pyenv init``, about 170 ms per shell).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench.netutil import free_port

SHELL = "/bin/bash"
SSHD = "/usr/sbin/sshd"
# Options every client run shares (no user config, no host key prompts).
CLIENT_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
TARGETS = {"throughput": 0.8, "rtt_p50": 6.0, "connect": 1.0}

TEMPLATE = """
variable "burrow_workspace_transition" {
  type    = string
  default = "start"
}
variable "burrow_agent_token" {
  type      = string
  default   = ""
  sensitive = true
}
variable "token_file" {
  type = string
}
resource "terraform_data" "agent" {
  count            = var.burrow_workspace_transition == "start" ? 1 : 0
  triggers_replace = [sha256(var.burrow_agent_token)]
  provisioner "local-exec" {
    command     = "printf %s \\"$T\\" > \\"$F\\""
    environment = { T = var.burrow_agent_token, F = var.token_file }
  }
}
variable "directory" {
  type = string
}
output "burrow_agents" {
  value = [{
    name = "main", resource = "terraform_data.agent", os = "linux",
    directory = var.directory, env = { SHLVL = "1" }
  }]
}
"""


class BenchError(Exception):
    """A benchmark step failed (a server did not start, a command failed)."""


# ---------------------------------------------------------------- asyncssh on TCP


async def _tcp(workdir: str, host_key: str) -> None:
    """The agent's SSH server on a loopback socket until killed; print its port."""
    from agent.ssh_adapter import SSHServer

    ssh = SSHServer(Path(host_key), shell=SHELL, env={"SHLVL": "1"}, workdir=Path(workdir))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, ssh.serve_stream, 0, host="127.0.0.1"))
        sys.stdout.write(f"{listeners[0].socket.getsockname()[1]}\n")
        sys.stdout.flush()


# ---------------------------------------------------------------- processes


@dataclass
class Procs:
    """Child processes of one run, stopped by PID at the end."""

    items: list[subprocess.Popen[Any]] = field(default_factory=list)

    def stop_all(self) -> None:
        for proc in reversed(self.items):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, capture_output=True, timeout=30)


def start_sshd(procs: Procs, tmp: Path, client_key: Path) -> int:
    """Debian's sshd on a free loopback port with its own config; returns the port.

    Raises:
        BenchError: sshd is not installed or did not start listening.
    """
    if not Path(SSHD).exists():
        raise BenchError(f"{SSHD} not found (Debian's openssh-server)")
    host_key = tmp / "sshd_host_key"
    _keygen(host_key)
    port = free_port()
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {client_key}.pub\nPermitRootLogin yes\nStrictModes no\n"
        "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PidFile {tmp}/sshd.pid\nSubsystem sftp /usr/lib/openssh/sftp-server\n"
        "SetEnv SHLVL=1\nPrintMotd no\nPrintLastLog no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    log = open(tmp / "sshd.log", "wb")  # noqa: SIM115 - lives as long as sshd
    procs.items.append(subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log))
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return port
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"sshd did not listen: {(tmp / 'sshd.log').read_text(errors='replace')}")


def _cli(env: dict[str, str], *args: str, timeout: float = 120, check: bool = True) -> str:
    """stdout + stderr of ``burrow args...``.

    Raises:
        BenchError: it exited non-zero (with ``check``).
    """
    done = subprocess.run([sys.executable, "-m", "burrow.cli", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          check=False)
    if check and done.returncode != 0:
        raise BenchError(f"burrow {' '.join(args[:2])}: {done.stdout.strip()[-1000:]}"
                         f" {done.stderr.strip()[-1000:]}")
    return done.stdout + done.stderr


@dataclass
class Burrow:
    env: dict[str, str]
    ssh_config: Path
    tcp_port: int
    paths: dict[str, str]
    build_failures: list[str]


def start_burrow(procs: Procs, stack: contextlib.ExitStack, tmp: Path) -> Burrow:
    """burrow server, two workspaces (relay-only and direct) with their agents.

    Raises:
        BenchError: a step failed.
    """
    from bench.control import burrow_server

    env = {k: v for k, v in os.environ.items() if not k.startswith("BURROW_")}
    env["BURROW_CONFIG_DIR"] = str(tmp / "config")
    env["HOME"] = str(tmp / "home")
    (tmp / "home").mkdir()
    (tmp / "server").mkdir()
    url = stack.enter_context(burrow_server(tmp / "server" / "data", None, 1))
    _cli(env, "login", url, "--username", "bench", "--password", "bench-password-1")
    tpl = tmp / "tpl"
    tpl.mkdir()
    (tpl / "main.tf").write_text(TEMPLATE)
    _cli(env, "templates", "push", str(tpl), "--name", "t")
    failures: list[str] = []
    for name in ("relay", "direct"):
        token_file = tmp / f"token-{name}"
        _cli(env, "create", name, "--template", "t", "--var", f"token_file={token_file}",
             "--var", f"directory={tmp / 'home'}")
        for attempt in range(3):
            if attempt:
                _cli(env, "start", name)
            out = _cli(env, "logs", name, "--follow", check=False)
            if "start: succeeded" in out:
                break
            failures.append(f"workspace {name}: {out.strip()[-600:]}")
            sys.stderr.write(f"bench ssh: build failed, starting again: {failures[-1]}\n")
        else:
            raise BenchError("builds failed:\n" + "\n".join(failures))
        agent_env = dict(env, BURROW_AGENT_TOKEN=token_file.read_text().strip())
        log = open(tmp / f"agent-{name}.log", "wb")  # noqa: SIM115 - lives as long as the agent
        procs.items.append(subprocess.Popen(
            [sys.executable, "-m", "burrow.cli", "agent", "--url", url,
             "--data-dir", str(tmp / f"agent-{name}"), "--report-interval", "60",
             "--direct-address", "127.0.0.1" if name == "direct" else ""],
            env=agent_env, cwd=tmp / "home", stdin=subprocess.DEVNULL, stdout=log, stderr=log))
    tcp = subprocess.Popen(
        [sys.executable, "-m", "bench.ssh", "_tcp", str(tmp / "home"), str(tmp / "host-tcp")],
        stdout=subprocess.PIPE, text=True)
    procs.items.append(tcp)
    assert tcp.stdout is not None
    line = tcp.stdout.readline()
    if not line.strip().isdigit():
        raise BenchError("the asyncssh-on-TCP server did not start")
    tcp_port = int(line)
    _cli(env, "config-ssh")
    paths = {name: settled_path(env, name, name) for name in ("relay", "direct")}
    return Burrow(env, tmp / "home" / ".ssh" / "config", tcp_port, paths, failures)


def settled_path(env: dict[str, str], workspace: str, want: str, seconds: float = 15) -> str:
    """The path ``burrow ping`` reports for the workspace, retried until it is ``want``.

    A new client starts on the relay and dials the direct endpoint in the
    background, so the first pong after an agent starts may still come over
    the relay.  Returns the last path seen (``want`` unless it never came).
    """
    deadline = time.monotonic() + seconds
    path = "?"
    while True:
        done = subprocess.run(
            [sys.executable, "-m", "burrow.cli", "ping", workspace, "-n", "3",
             "--interval", "0.05"],
            env=env, text=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
            check=False)
        seen = re.findall(r" via (\S+)", done.stdout)
        path = seen[-1] if seen else "?"
        if path == want or time.monotonic() > deadline:
            return path
        time.sleep(0.5)


# ---------------------------------------------------------------- measurements


@dataclass
class Row:
    name: str
    argv: list[str]  # ssh ... <host>, the command to run goes after
    env: dict[str, str] | None = None
    up: list[float] = field(default_factory=list)
    down: list[float] = field(default_factory=list)
    true: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    kex: str = "?"
    shell: str = "?"


async def _run(argv: list[str], env: dict[str, str] | None, **kw: Any) -> Any:
    with trio.fail_after(600):
        return await trio.run_process(argv, env=env, **kw)


def _grow_pipe(stream: Any) -> None:
    """1 MiB pipe buffer (Linux F_SETPIPE_SZ), so the local pipe is no bottleneck."""
    with contextlib.suppress(OSError, AttributeError):
        import fcntl

        fcntl.fcntl(stream.fileno(), 1031, 1 << 20)  # F_SETPIPE_SZ


async def connect_time(row: Row) -> float:
    t0 = time.perf_counter()
    await _run([*row.argv, "true"], row.env, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0


async def download(row: Row, size: int) -> float:
    """MB/s from the first byte to the last, so session set-up is excluded.

    Raises:
        BenchError: fewer bytes arrived than asked for.
    """
    proc = await trio.lowlevel.open_process(
        [*row.argv, f"head -c {size} /dev/zero"], stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL, env=row.env)
    assert proc.stdout is not None
    _grow_pipe(proc.stdout)
    got = 0
    first = 0.0
    with trio.fail_after(600):
        async with proc.stdout:
            while data := await proc.stdout.receive_some(1 << 20):
                if not got:
                    first = time.perf_counter()
                got += len(data)
        await proc.wait()
    if got != size:
        raise BenchError(f"{row.name}: downloaded {got} of {size} bytes")
    return got / (time.perf_counter() - first) / 1e6


async def upload(row: Row, size: int) -> float:
    """MB/s into the remote ``cat > /dev/null``, from the moment ssh reads its stdin.

    The clock starts once the first 4 MiB are written (more than the local pipe
    holds, so ssh is reading: the session is up) and stops when ssh exits,
    i.e. after the remote end consumed every byte.  Bytes before the start
    are not counted.

    Raises:
        BenchError: the remote command failed.
    """
    proc = await trio.lowlevel.open_process(
        [*row.argv, "cat > /dev/null"], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, env=row.env)
    assert proc.stdin is not None
    _grow_pipe(proc.stdin)
    block = b"\0" * (1 << 20)
    sent = 0
    start = 0.0
    counted = 0
    with trio.fail_after(600):
        async with proc.stdin:
            while sent < size:
                chunk = block[: size - sent]
                await proc.stdin.send_all(chunk)
                sent += len(chunk)
                if start:
                    counted += len(chunk)
                elif sent >= min(4 << 20, size // 4):
                    start = time.perf_counter()
        code = await proc.wait()
    if code != 0:
        raise BenchError(f"{row.name}: upload exited {code}")
    return counted / (time.perf_counter() - start) / 1e6


async def echo_rtt(row: Row, rounds: int) -> tuple[float, float]:
    """64-byte ping-pong through ``cat`` on an established session: p50, p99 in µs."""
    proc = await trio.lowlevel.open_process(
        [*row.argv, "cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=row.env)
    assert proc.stdin is not None
    assert proc.stdout is not None
    payload = b"k" * 64
    samples: list[float] = []
    warm = max(5, rounds // 10)
    with trio.fail_after(120):
        for i in range(rounds + warm):
            t0 = time.perf_counter()
            await proc.stdin.send_all(payload)
            got = 0
            while got < len(payload):
                chunk = await proc.stdout.receive_some(65536)
                if not chunk:
                    raise BenchError(f"{row.name}: echo session ended")
                got += len(chunk)
            if i >= warm:
                samples.append((time.perf_counter() - t0) * 1e6)
        await proc.stdin.aclose()
        await proc.wait()
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


async def probe(row: Row) -> tuple[str, str]:
    """The key exchange ``ssh -v`` reports for this row, and the session's shell setup.

    The shell setup is ``$0`` and whether root's ``~/.bashrc`` ran (it defines
    the shell function ``pyenv``; functions are not inherited): equal on every
    row, or the connect times are not comparable.
    This is also each row's warm-up connection.
    """
    argv = [*row.argv[:1], "-v", *row.argv[1:],
            'if [ "$(type -t pyenv 2>/dev/null)" = function ]; then r=yes; else r=no; fi;'
            ' echo "$0 bashrc=$r"']
    result = await _run(argv, row.env, capture_stderr=True, capture_stdout=True,
                        stdin=subprocess.DEVNULL, check=False)
    match = re.search(rb"kex: algorithm: (\S+)", result.stderr)
    shell = result.stdout.decode(errors="replace").strip() or "?"
    return (match.group(1).decode() if match else "?"), shell


async def measure(rows: list[Row], args: argparse.Namespace) -> None:
    """Each repetition visits every row in turn, so background load hits all alike."""
    size = args.mib * 1024 * 1024
    for row in rows:
        row.kex, row.shell = await probe(row)
    for rep in range(args.runs):
        for row in rows:
            row.true.append(await connect_time(row))
            if rep < args.transfer_runs:
                row.up.append(await upload(row, size))
                row.down.append(await download(row, size))
                p50, p99 = await echo_rtt(row, args.rtt_count)
                row.p50.append(p50)
                row.p99.append(p99)


# ---------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("ssh") is None:
        raise BenchError("OpenSSH client (ssh) not found")
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="burrow-bench-ssh-") as tmpdir, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmpdir)
        stack.callback(procs.stop_all)
        key = tmp / "client_key"
        _keygen(key)
        sshd_port = start_sshd(procs, tmp, key)
        burrow = start_burrow(procs, stack, tmp)
        cipher = ["-c", args.cipher] if args.cipher else []
        if args.kex:
            cipher += ["-o", f"KexAlgorithms={args.kex}"]
        direct = ["ssh", "-F", "/dev/null", *CLIENT_OPTS, *cipher, "-i", str(key)]
        via = ["ssh", "-F", str(burrow.ssh_config), *CLIENT_OPTS, *cipher]
        rows = [
            Row("sshd", [*direct, "-p", str(sshd_port), "root@127.0.0.1"]),
            Row("burrow relay", [*via, "burrow.relay"], burrow.env),
            Row("burrow direct", [*via, "burrow.direct"], burrow.env),
            Row("asyncssh on TCP", [*direct, "-p", str(burrow.tcp_port), "root@127.0.0.1"]),
        ]
        trio.run(measure, rows, args)
        paths_after = {name: settled_path(burrow.env, name, name, 5)
                       for name in ("relay", "direct")}
    med = statistics.median
    results: list[dict[str, Any]] = []
    for row in rows:
        results.append({
            "name": row.name,
            "upload_mb_s": med(row.up), "download_mb_s": med(row.down),
            "rtt_p50_us": med(row.p50), "rtt_p99_us": med(row.p99),
            "connect_ms": med(row.true) * 1e3, "kex": row.kex, "shell": row.shell,
        })
    base = results[0]
    for r in results:
        r["x_upload"] = r["upload_mb_s"] / base["upload_mb_s"]
        r["x_download"] = r["download_mb_s"] / base["download_mb_s"]
        r["x_rtt_p50"] = r["rtt_p50_us"] / base["rtt_p50_us"]
        r["x_connect"] = r["connect_ms"] / base["connect_ms"]
    return {
        "agent": "real `burrow agent` processes (relay one with --direct-address '')",
        "paths": burrow.paths, "paths_after": paths_after,
        "build_failures": burrow.build_failures, "mib": args.mib, "runs": args.runs,
        "transfer_runs": args.transfer_runs, "rtt_count": args.rtt_count,
        "cipher": args.cipher or "OpenSSH default", "shell": f"{SHELL} with SHLVL=1 (no ~/.bashrc)",
        "targets": TARGETS, "results": results,
    }


def table(report: dict[str, Any]) -> str:
    out = [
        f"{report['mib']} MiB each way, {report['rtt_count']} 64-byte echoes (medians of"
        f" {report['transfer_runs']}), median of {report['runs']} x 'ssh <host> true';"
        f" cipher {report['cipher']}; shell {report['shell']}",
        f"agent: {report['agent']}; burrow paths seen by `burrow ping` before/after: "
        + ", ".join(f"{k} -> {v}/{report['paths_after'][k]}" for k, v in report["paths"].items()),
        "",
        f"{'server':16} {'up MB/s':>8} {'down MB/s':>9} {'RTT p50/p99 us':>16}"
        f" {'true ms':>8} {'x up/down':>11} {'x RTT':>6} {'x true':>7}  kex",
    ]
    for r in report["results"]:
        out.append(
            f"{r['name']:16} {r['upload_mb_s']:8.1f} {r['download_mb_s']:9.1f}"
            f" {r['rtt_p50_us']:7.0f}/{r['rtt_p99_us']:<8.0f} {r['connect_ms']:8.1f}"
            f" {r['x_upload']:5.2f}/{r['x_download']:<5.2f} {r['x_rtt_p50']:6.2f}"
            f" {r['x_connect']:7.2f}  {r['kex']}"
        )
    shells = {r["shell"] for r in report["results"]}
    out.append(f"session shell on every row: {shells.pop()}" if len(shells) == 1 else
               "WARNING: session shells differ: "
               + ", ".join(f"{r['name']}: {r['shell']}" for r in report["results"]))
    t = report["targets"]
    out.append(f"targets (x sshd): throughput >= {t['throughput']}, RTT p50 <= {t['rtt_p50']},"
               f" connect <= {t['connect']}")
    return "\n".join(out)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def main_cli(argv: list[str]) -> int:
    if argv[:1] == ["_tcp"] and len(argv) == 3:
        trio.run(_tcp, argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench ssh",
        description="OpenSSH client into burrow (relay, direct) vs into sshd, on loopback")
    parser.add_argument("--mib", type=_positive_int, default=1024,
                        help="MiB uploaded and downloaded per row and run (default 1024)")
    parser.add_argument("--rtt-count", type=_positive_int, default=500,
                        help="64-byte echoes per row and run (default 500)")
    parser.add_argument("--runs", type=_positive_int, default=5,
                        help="repetitions of 'ssh <host> true' (default 5)")
    parser.add_argument("--transfer-runs", type=_positive_int, default=3,
                        help="repetitions of the transfers and echoes, at most --runs"
                        " (default 3)")
    parser.add_argument("--cipher", default="", help="ssh -c CIPHER (default: OpenSSH's)")
    parser.add_argument("--kex", default="",
                        help="ssh -o KexAlgorithms=KEX for every row (default: negotiated)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    args.transfer_runs = min(args.transfer_runs, args.runs)
    try:
        report = run(args)
    except BenchError as exc:
        sys.stderr.write(f"bench ssh: {exc}\n")
        return 1
    sys.stdout.write((json.dumps(report, indent=2) if args.json else table(report)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_cli(sys.argv[1:]))
