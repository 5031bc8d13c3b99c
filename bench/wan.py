"""``python -m bench wan``: burrow's data path at distance, beside plain TCP over the same link.

Every hop that would cross a WAN crosses an emulated link (``bench.link``,
one child process per link, reshaped between RTTs through its ``--control``
stdin): one-way delay RTT/2 each way and ``--rate-mbit`` per direction.

* ``echo``: the echo/sink peer (``bench relay``'s ``echo-sink`` role) behind
  a link: the plain-TCP baseline and the link's own 64-byte echo RTT;
* ``server``: a real ``burrow server`` listening behind a link, its
  ``--access-url`` the link, so the client (API, DERP) and both agents
  (API, DERP) reach it across the link.  A relayed byte therefore crosses
  the link twice (client -> relay -> agent), as it does when the relay is
  far from both ends;
* ``direct``: a link in front of the ``direct`` agent's direct-path port,
  which that agent advertises instead of its own port (see ``_agent``), so
  the direct path crosses the link once, like the plain-TCP baseline;
* ``sshd``: OpenSSH's sshd (``bench ssh``'s) behind a link, the ``scp`` baseline.

Two workspaces from a one-resource template, two real ``burrow agent``
processes: ``relay`` (``--direct-address ''``: relay only) and ``direct``.
The client side is what a user runs: ``burrow port-forward`` to the echo peer
(one forwarded port per workspace; each connection is one tunnel stream), and
OpenSSH's ``scp`` through the ``ProxyCommand`` that ``burrow config-ssh`` writes.

Per RTT: upload and download of ``--mib`` MiB on one stream and split over 8
concurrent streams, timed at the receiver from first to last byte (so set-up
is excluded and every path is timed alike), with ratios to plain TCP at the
same RTT; a 64-byte echo (p50/p99) through the tunnel vs through the link;
``scp`` of ``--mib`` MiB (wall time, and ``ssh true`` for the set-up).  Every
row checks which link carried its bytes (the ``via`` column).

The keystroke table sets the tunnel's echo beside the link's own measured
echo: each crossing of the emulator adds ~0.5-1 ms of timer lateness, and a
relayed echo crosses the link twice as often as the plain one.

The link terminates TCP (see ``bench.link``): plain TCP through it runs at the
line rate at any RTT, the ceiling, while windows that applications run end to
end (the tunnel's flow control, SSH channel windows) feel the full delay.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from bench.link import LinkProcess
from bench.netutil import free_port
from bench.relay import Child, _percentiles, echo_rtt_samples
from bench.ssh import (
    CLIENT_OPTS,
    TEMPLATE,
    BenchError,
    Procs,
    _cli,
    _keygen,
    settled_path,
    start_sshd,
)

STREAMS = 8
LINKS = ("echo", "server", "direct", "sshd")


def _say(text: str) -> None:
    sys.stderr.write(f"bench wan: {text}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- child processes


def _agent(argv: list[str]) -> int:
    """``burrow agent`` whose direct path listens on one port and is advertised as another.

    ``_agent LISTEN_PORT ADVERTISED_PORT AGENT_ARGS...``.  The agent advertises
    the port it listens on; to put a link on the direct path, this patches
    ``Endpoint.listen_direct`` (and nothing else) before running the real CLI.
    """
    from burrow.cli import main as burrow_main
    from tunnel.endpoint import Endpoint

    listen_port, advertised = int(argv[0]), int(argv[1])
    original = Endpoint.listen_direct

    async def listen_direct(self: Endpoint, host: str = "127.0.0.1",
                            port: int = 0) -> tuple[str, int]:
        bound_host, _ = await original(self, host, listen_port)
        return bound_host, advertised

    Endpoint.listen_direct = listen_direct  # type: ignore[method-assign]
    return burrow_main(["agent", *argv[2:]])


def _await_line(proc: subprocess.Popen[str], word: str, timeout: float = 60) -> str:
    """The first stdout line of ``proc`` that contains ``word``.

    Raises:
        BenchError: it exited or did not print one within ``timeout`` seconds.
    """
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        line = proc.stdout.readline() if ready else ""
        if word in line:
            return line.strip()
        if not line and proc.poll() is not None:
            break
    raise BenchError(f"{proc.args!r} did not print {word!r}")


@dataclass
class Lab:
    env: dict[str, str]
    links: dict[str, LinkProcess]
    echo_port: int
    forwards: dict[str, int]  # workspace -> local port of its `burrow port-forward`
    ssh_config: Path
    sshd_argv: list[str]
    paths: dict[str, str]


def start_lab(procs: Procs, stack: contextlib.ExitStack, tmp: Path, rate: float) -> Lab:
    """Links, sshd, the echo peer, burrow server, two workspaces, agents, port-forwards.

    Raises:
        BenchError: a step failed.
    """
    from bench.control import burrow_server

    key = tmp / "client_key"
    _keygen(key)
    sshd_port = start_sshd(procs, tmp, key)
    echo = Child("echo-sink")
    stack.callback(echo.close)
    echo_port = int(echo.line())
    server_port, direct_port = free_port(), free_port()
    links = {"echo": LinkProcess(echo_port), "server": LinkProcess(server_port),
             "direct": LinkProcess(direct_port), "sshd": LinkProcess(sshd_port)}
    for link in links.values():
        stack.callback(link.close)
        link.set(rate_mbit=rate)
    url = f"http://127.0.0.1:{links['server'].port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURROW_")}
    env["BURROW_CONFIG_DIR"] = str(tmp / "config")
    env["HOME"] = str(tmp / "home")
    (tmp / "home").mkdir()
    (tmp / "server").mkdir()
    _say("starting burrow server behind the link")
    stack.enter_context(burrow_server(
        tmp / "server" / "data", None, 1,
        ["--listen", f"127.0.0.1:{server_port}", "--access-url", url]))
    _cli(env, "login", url, "--username", "bench", "--password", "bench-password-1")
    (tmp / "tpl").mkdir()
    (tmp / "tpl" / "main.tf").write_text(TEMPLATE)
    _cli(env, "templates", "push", str(tmp / "tpl"), "--name", "t")
    # Agents and port-forwards stop first (LIFO), while the server and links still answer.
    clients = Procs()
    stack.callback(clients.stop_all)
    forwards: dict[str, int] = {}
    for name in ("relay", "direct"):
        _say(f"building workspace {name}")
        token_file = tmp / f"token-{name}"
        _cli(env, "create", name, "--template", "t", "--var", f"token_file={token_file}",
             "--var", f"directory={tmp / 'home'}")
        out = _cli(env, "logs", name, "--follow", check=False)
        if "start: succeeded" not in out:
            raise BenchError(f"workspace {name} did not build: {out.strip()[-600:]}")
        agent_env = dict(env, BURROW_AGENT_TOKEN=token_file.read_text().strip(),
                         BURROW_DIRECT_ADDRESS="" if name == "relay" else "127.0.0.1")
        agent = ["--url", url, "--data-dir", str(tmp / f"agent-{name}"),
                 "--report-interval", "60"]
        argv = [sys.executable, "-m", "burrow.cli", "agent", *agent] if name == "relay" else \
            [sys.executable, "-m", "bench.wan", "_agent", str(direct_port),
             str(links["direct"].port), *agent]
        log = open(tmp / f"agent-{name}.log", "wb")  # noqa: SIM115 - lives as long as the agent
        stack.callback(log.close)
        clients.items.append(subprocess.Popen(argv, env=agent_env, cwd=tmp / "home",
                                              stdin=subprocess.DEVNULL, stdout=log, stderr=log))
    paths = {name: settled_path(env, name, name, 30) for name in ("relay", "direct")}
    for name in ("relay", "direct"):
        local = free_port()
        log = open(tmp / f"pf-{name}.log", "wb")  # noqa: SIM115 - lives as long as the forward
        stack.callback(log.close)
        proc = subprocess.Popen(
            [sys.executable, "-m", "burrow.cli", "port-forward", name, "--tcp",
             f"{local}:{echo_port}"], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=log, text=True)
        clients.items.append(proc)
        _await_line(proc, "Forwarding")
        forwards[name] = local
    _cli(env, "config-ssh")
    sshd_argv = ["-F", "/dev/null", *CLIENT_OPTS, "-i", str(key)]
    return Lab(env, links, echo_port, forwards, tmp / "home" / ".ssh" / "config", sshd_argv,
               paths)


# ---------------------------------------------------------------- measurements


# A transfer as its receiver saw it: first and last read times (ns) and the size of
# the first read, which arrived at the first instant and so is not part of the rate.
Span = tuple[int, int, int]


async def _upload(port: int, size: int) -> Span:
    """Send ``size`` bytes in mode U; the receiver's ``Span``.

    Raises:
        BenchError: the receiver counted a different number of bytes.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"U")
        block = bytes(1 << 18)
        left = size
        while left > 0:
            await stream.send_all(block[:left])
            left -= len(block)
        await stream.send_eof()
        reply = b""
        while len(reply) < 32 and (data := await stream.receive_some(32 - len(reply))):
            reply += data
    if len(reply) < 32 or int.from_bytes(reply[:8], "big") != size:
        raise BenchError(f"upload through port {port}: receiver got {reply[:8]!r}")
    first, last, head = (int.from_bytes(reply[i:i + 8], "big") for i in (8, 16, 24))
    return first, last, head


async def _download(port: int, size: int) -> Span:
    """Receive ``size`` bytes in mode D; this end's ``Span``.

    Raises:
        BenchError: a different number of bytes arrived.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    got = first = head = 0
    async with stream:
        await stream.send_all(b"D" + size.to_bytes(8, "big"))
        while data := await stream.receive_some(1 << 18):
            if not got:
                first, head = time.perf_counter_ns(), len(data)
            got += len(data)
    if got != size:
        raise BenchError(f"download through port {port}: {got} of {size} bytes")
    return first, time.perf_counter_ns(), head


async def throughput(port: int, size: int, streams: int, upload: bool) -> float:
    """MB/s over ``streams`` concurrent connections carrying ``size`` bytes in all.

    From the first byte any receiver saw to the last; the first read of the
    earliest stream is not counted (it took no time to arrive).
    """
    spans: list[Span] = []
    each = max(1, size // streams)

    async def one() -> None:
        spans.append(await (_upload if upload else _download)(port, each))

    with trio.fail_after(900):
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(one)
    start, _, head = min(spans)
    elapsed = max(last for _, last, _ in spans) - start
    return (each * streams - head) / max(elapsed, 1000) * 1e3


async def echo_ms(port: int, count: int) -> tuple[float, float]:
    """64-byte echo through ``port`` (mode R): p50, p99 in ms."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"R")
        with trio.fail_after(600):
            samples = await echo_rtt_samples(stream, count)
    p50, p99 = _percentiles(samples)
    return p50 / 1e3, p99 / 1e3


async def _timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    with trio.fail_after(900):
        done = await trio.run_process(argv, env=env, stdin=subprocess.DEVNULL,
                                      capture_stdout=True, capture_stderr=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{argv[0]} {argv[-1]}: exit {done.returncode}: "
                         f"{done.stderr.decode(errors='replace').strip()[-500:]}")
    return time.perf_counter() - t0


def _via(lab: Lab, before: dict[str, int], size: int) -> str:
    """Which link carried at least ``size`` bytes since ``before`` (direct wins)."""
    for name in ("direct", "server", "echo", "sshd"):
        if lab.links[name].carried() - before[name] >= size:
            return "relay" if name == "server" else name
    return "?"


async def measure_echoes(lab: Lab, rtt: float, count: int) -> dict[str, float]:
    """64-byte echoes through the link alone, the relay and the direct path (ms).

    Run first at each RTT, so the tunnel has seen the new RTT before the transfers.
    """
    _say(f"RTT {rtt:g} ms: 64-byte echoes")
    keys: dict[str, float] = {}
    for name, port in (("link", lab.links["echo"].port), ("relay", lab.forwards["relay"]),
                       ("direct", lab.forwards["direct"])):
        keys[f"{name}_p50_ms"], keys[f"{name}_p99_ms"] = await echo_ms(port, count)
    return keys


async def measure_transfers(lab: Lab, rtt: float, mib: int) -> list[dict[str, Any]]:
    """Up and down on each path, with ratios to plain TCP through the same link."""
    size = mib << 20
    rows: list[dict[str, Any]] = []
    paths = [("plain TCP", lab.links["echo"].port, 1),
             ("relay, 1 stream", lab.forwards["relay"], 1),
             (f"relay, {STREAMS} streams", lab.forwards["relay"], STREAMS),
             ("direct, 1 stream", lab.forwards["direct"], 1),
             (f"direct, {STREAMS} streams", lab.forwards["direct"], STREAMS)]
    for name, port, streams in paths:
        _say(f"RTT {rtt:g} ms: {name}: {mib} MiB up and down")
        before = {k: v.carried() for k, v in lab.links.items()}
        up = await throughput(port, size, streams, upload=True)
        down = await throughput(port, size, streams, upload=False)
        rows.append({"path": name, "up_mb_s": up, "down_mb_s": down,
                     "via": _via(lab, before, 2 * size)})
    base = rows[0]
    for row in rows:
        row["x_up"] = row["up_mb_s"] / base["up_mb_s"]
        row["x_down"] = row["down_mb_s"] / base["down_mb_s"]
    return rows


async def measure_scp(lab: Lab, rtt: float, mib: int, tmp: Path) -> list[dict[str, Any]]:
    """``scp`` of ``mib`` MiB to sshd, burrow relay and burrow direct; ``ssh true`` beside.

    Raises:
        BenchError: a command failed or the file arrived short.
    """
    size = mib << 20
    scp: list[dict[str, Any]] = []
    src = tmp / "scp-src"
    dst = tmp / "home" / "scp-dst"
    burrow = ["-F", str(lab.ssh_config), *CLIENT_OPTS]
    sshd_port = str(lab.links["sshd"].port)
    targets = [("sshd", lab.sshd_argv, sshd_port, "root@127.0.0.1"),
               ("burrow relay", burrow, "", "burrow.relay"),
               ("burrow direct", burrow, "", "burrow.direct")]
    for name, opts, target_port, host in targets:
        _say(f"RTT {rtt:g} ms: scp {mib} MiB to {name}")
        connect = await _timed(
            ["ssh", *opts, *(["-p", target_port] if target_port else []), host, "true"], lab.env)
        before = {k: v.carried() for k, v in lab.links.items()}
        wall = await _timed(["scp", "-q", *opts, *(["-P", target_port] if target_port else []),
                             str(src), f"{host}:{dst}"], lab.env)
        if dst.stat().st_size != size:
            raise BenchError(f"scp to {name}: {dst.stat().st_size} of {size} bytes arrived")
        dst.unlink()
        scp.append({"target": name, "connect_s": connect, "scp_s": wall,
                    "mb_s": size / wall / 1e6, "via": _via(lab, before, size)})
    for row in scp:
        row["x_mb_s"] = row["mb_s"] / scp[0]["mb_s"]
    return scp


# ---------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="burrow-bench-wan-") as tmpdir, \
            contextlib.ExitStack() as stack:
        stack.callback(procs.stop_all)
        tmp = Path(tmpdir)
        with open(tmp / "scp-src", "wb") as fh:
            fh.truncate(args.mib << 20)
        lab = start_lab(procs, stack, tmp, args.rate_mbit)

        async def sweep() -> list[dict[str, Any]]:
            out = []
            for rtt in args.rtts:
                for link in lab.links.values():
                    link.set(delay_ms=rtt / 2, rate_mbit=args.rate_mbit,
                             jitter_ms=args.jitter_ms, queue_kib=args.queue_kib)
                echo = await measure_echoes(lab, rtt, args.rtt_count)
                rows = await measure_transfers(lab, rtt, args.mib)
                scp = await measure_scp(lab, rtt, args.mib, tmp)
                out.append({"rtt_ms": rtt, "rows": rows, "echo": echo, "scp": scp})
            return out

        results = trio.run(sweep)
    return {"rate_mbit": args.rate_mbit, "jitter_ms": args.jitter_ms,
            "queue_kib": args.queue_kib, "mib": args.mib, "rtt_count": args.rtt_count,
            "streams": STREAMS, "paths": lab.paths, "results": results}


def table(report: dict[str, Any]) -> str:
    out = [f"emulated link: {report['rate_mbit']:g} Mbit/s each way, one-way delay RTT/2"
           f" + up to {report['jitter_ms']:g} ms jitter, {report['queue_kib']} KiB queue;"
           f" {report['mib']} MiB per transfer, timed first to last byte at the receiver;"
           f" {report['rtt_count']} 64-byte echoes",
           "relayed bytes cross the link twice (client -> server relay -> agent);"
           " direct paths and plain TCP cross it once",
           "`burrow ping` before the sweep: "
           + ", ".join(f"{k} -> {v}" for k, v in report["paths"].items()),
           "",
           f"{'RTT ms':>6}  {'path':18} {'up MB/s':>8} {'down MB/s':>9} {'x up':>6}"
           f" {'x down':>6}  via"]
    for res in report["results"]:
        for r in res["rows"]:
            out.append(f"{res['rtt_ms']:>6g}  {r['path']:18} {r['up_mb_s']:8.1f}"
                       f" {r['down_mb_s']:9.1f} {r['x_up']:6.2f} {r['x_down']:6.2f}  {r['via']}")
    out += ["", "keystrokes: 64-byte echo, ms",
            f"{'RTT ms':>6}  {'link p50/p99':>14}  {'relay p50/p99':>14} {'relay-link':>10}"
            f"  {'direct p50/p99':>14} {'direct-link':>11}"]
    for res in report["results"]:
        e = res["echo"]
        out.append(
            f"{res['rtt_ms']:>6g}  {e['link_p50_ms']:6.2f}/{e['link_p99_ms']:<7.2f}"
            f"  {e['relay_p50_ms']:6.2f}/{e['relay_p99_ms']:<7.2f}"
            f" {e['relay_p50_ms'] - e['link_p50_ms']:10.2f}"
            f"  {e['direct_p50_ms']:6.2f}/{e['direct_p99_ms']:<7.2f}"
            f" {e['direct_p50_ms'] - e['link_p50_ms']:11.2f}")
    out += ["", f"scp of {report['mib']} MiB (wall time, set-up included; 'ssh true' beside it)",
            f"{'RTT ms':>6}  {'target':14} {'ssh true s':>10} {'scp s':>7} {'MB/s':>7}"
            f" {'x MB/s':>6}  via"]
    for res in report["results"]:
        for r in res["scp"]:
            out.append(f"{res['rtt_ms']:>6g}  {r['target']:14} {r['connect_s']:10.2f}"
                       f" {r['scp_s']:7.2f} {r['mb_s']:7.1f} {r['x_mb_s']:6.2f}  {r['via']}")
    return "\n".join(out)


def _rtts(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of milliseconds: {text!r}") from None
    if not values or any(not 0 <= v <= 10_000 for v in values):
        raise argparse.ArgumentTypeError(f"RTTs must be 0-10000 ms: {text!r}")
    return values


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return value

    return parse


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def main(argv: list[str]) -> int:
    if argv[:1] == ["_agent"]:
        return _agent(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m bench wan",
        description="burrow (relay, direct, scp) vs plain TCP through an emulated WAN link")
    parser.add_argument("--rtts", type=_rtts, default=[0, 20, 60, 120, 240],
                        help="link RTTs in ms, comma-separated (default 0,20,60,120,240)")
    parser.add_argument("--rate-mbit", type=_positive(float), default=200.0,
                        help="link rate per direction (default 200)")
    parser.add_argument("--jitter-ms", type=_non_negative, default=0.0,
                        help="up to this much extra one-way delay per chunk (default 0)")
    parser.add_argument("--queue-kib", type=_positive(int), default=512,
                        help="the link's bottleneck queue (default 512)")
    parser.add_argument("--mib", type=_positive(int), default=48,
                        help="MiB per transfer (default 48)")
    parser.add_argument("--rtt-count", type=_positive(int), default=50,
                        help="64-byte echoes per path and RTT (default 50)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one RTT (the first of --rtts, else 20), 2 MiB, 10 echoes")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    if args.quick:
        rtts = [a for a in argv if a.startswith("--rtts")]
        args.rtts = args.rtts[:1] if rtts else [20.0]
        args.mib, args.rtt_count = 2, 10
    try:
        report = run(args)
    except (BenchError, RuntimeError) as exc:  # RuntimeError: a link or child did not start
        sys.stderr.write(f"bench wan: {exc}\n")
        return 1
    sys.stdout.write((json.dumps(report, indent=2) if args.json else table(report)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
