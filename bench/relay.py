"""``python -m bench relay``: relay latency, throughput and idle memory on loopback.

One run measures, against baselines taken in the same run:

* direct TCP (driver -> echo/sink process),
* socat (``-b65536``) between the driver and the same echo/sink process,
* a naive trio relay (two copy loops, 64 KiB reads): the floor for Python,
* a naive threaded DERP relay (``bench/naive_relay.py``: blocking sockets, a
  thread per client, read a frame and ``sendall`` it): the bar burrow's relay
  must clear by design, not only the floor of copying bytes,
* burrow's DERP relay: raw DERP on TCP (the server core, no HTTP), over the
  HTTP upgrade on ``/derp`` and over WebSocket (when ``relay.node`` exists).

Every path has three processes: the driver (this one), the middle (nothing,
socat or the relay) and the far peer (echo/sink, or a DERP client that echoes
and acknowledges).  RTT is a 64-byte ping-pong (p50/p99 of ``--rtt-count``);
throughput streams 64 KiB packets for ``--seconds``; DERP keeps at most
``WINDOW`` packets in flight (the far peer acknowledges), as the tunnel's flow
control would, so the number is goodput with no relay drops.  Memory: RSS
growth of a relay process per idle DERP connection with ``--idle-clients``
clients held open by a separate process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from bench.netutil import free_port
from derp import frames as fr
from derp.conn import DerpConn
from derp.keys import generate_private_key, key_from_hex, public_key
from derp.server import DerpServer

PACKET = 64 << 10
WINDOW = 64  # DERP packets in flight (4 MiB), acknowledged every ACK_EVERY
ACK_EVERY = 16
Dial = Callable[[], Awaitable[trio.abc.Stream]]
NAIVE = "naive threaded DERP relay"


@dataclass
class Result:
    path: str
    rtt_p50_us: float | None = None
    rtt_p99_us: float | None = None
    throughput_mbit: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- child roles


def _announce(value: object) -> None:
    sys.stdout.write(f"{value}\n")
    sys.stdout.flush()


async def _role_echo_sink() -> None:
    """TCP peer, by the first byte: R = echo everything; T = count until EOF then reply
    the count; U = the same, replying count, first- and last-byte ``perf_counter_ns`` and
    the first read's size (8 bytes each: receiver-side timing); D + 8-byte N = send N
    zero bytes, then EOF."""

    async def handle(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            mode = await stream.receive_some(1)
            if mode == b"R":
                while data := await stream.receive_some(1 << 16):
                    await stream.send_all(data)
            elif mode in (b"T", b"U"):
                total = first = head = 0
                while data := await stream.receive_some(1 << 18):
                    if not total:
                        first, head = time.perf_counter_ns(), len(data)
                    total += len(data)
                reply = total.to_bytes(8, "big")
                if mode == b"U":
                    for value in (first, time.perf_counter_ns(), head):
                        reply += value.to_bytes(8, "big")
                await stream.send_all(reply)
            elif mode == b"D":
                count = b""
                while len(count) < 8 and (data := await stream.receive_some(8 - len(count))):
                    count += data
                left = int.from_bytes(count, "big")
                block = bytes(1 << 18)
                while left > 0:
                    await stream.send_all(block[:left])
                    left -= len(block)
                await stream.send_eof()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    _announce(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def _role_trio_forward(target_port: int) -> None:
    """A naive trio relay like socat: two copy loops with 64 KiB reads per connection."""

    async def pump(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await src.receive_some(1 << 16):
                await dst.send_all(data)
            await dst.send_eof()  # type: ignore[attr-defined]

    async def handle(stream: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", target_port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, stream, upstream)
            nursery.start_soon(pump, upstream, stream)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    _announce(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def _role_relay_raw(private_hex: str) -> None:
    """The DERP server core on raw TCP (no HTTP), for the core path and memory."""
    server = DerpServer(key_from_hex(private_hex))

    async def handle(stream: trio.SocketStream) -> None:
        await server.serve(stream)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    _announce(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def _role_relay_http(private_hex: str) -> None:
    """burrow's relay node: the HTTP front door with /derp (upgrade and WebSocket)."""
    from relay.node import RelayConfig, RelayNode

    node = RelayNode(RelayConfig(listen="127.0.0.1:0", private_key=key_from_hex(private_hex)))
    async with trio.open_nursery() as nursery:
        url: str = await nursery.start(node.serve)
        _announce(url.rsplit(":", 1)[1])


def _role_relay_naive(private_hex: str) -> None:
    from bench.naive_relay import serve

    serve(key_from_hex(private_hex), _announce)


def _dialer(transport: str, port: int) -> Dial:
    if transport == "raw":

        async def dial_raw() -> trio.abc.Stream:
            return await trio.open_tcp_stream("127.0.0.1", port)

        return dial_raw
    from derp.dial import dial

    async def dial_http() -> trio.abc.Stream:
        stream, used = await dial(
            f"http://127.0.0.1:{port}", force_websocket=transport == "websocket"
        )
        want = "websocket" if transport == "websocket" else "derp"
        if used != want:
            raise RuntimeError(f"dialed {used}, wanted {want}")
        return stream

    return dial_http


async def _role_derp_peer(transport: str, port: int, private_hex: str) -> None:
    """Far DERP peer: echo 'P' packets, acknowledge 'T' packets, answer 'E' with a count."""
    conn = await DerpConn.handshake(await _dialer(transport, port)(), key_from_hex(private_hex))
    _announce("ready")
    received = 0
    total = 0
    while True:
        ev = await conn.receive()
        if not isinstance(ev, fr.RecvPacket):
            continue
        kind = ev.data[:1]
        if kind == b"P":
            await conn.send_packet(ev.src, ev.data)
        elif kind == b"T":
            received += 1
            total += len(ev.data)
            if received % ACK_EVERY == 0:
                await conn.send_packet(ev.src, b"A" + received.to_bytes(8, "big"))
        elif kind == b"E":
            await conn.send_packet(ev.src, b"D" + total.to_bytes(8, "big"))
            received = total = 0


async def _role_idle_clients(transport: str, port: int, count: int) -> None:
    """Hold ``count`` idle DERP connections open until stdin closes."""
    conns: list[DerpConn] = []
    dial = _dialer(transport, port)
    for _ in range(count):
        conns.append(await DerpConn.handshake(await dial(), generate_private_key()))
    _announce("ready")
    await trio.to_thread.run_sync(sys.stdin.read)


def _run_role(argv: list[str]) -> None:
    role, *args = argv
    if role == "echo-sink":
        trio.run(_role_echo_sink)
    elif role == "trio-forward":
        trio.run(_role_trio_forward, int(args[0]))
    elif role == "relay-raw":
        trio.run(_role_relay_raw, args[0])
    elif role == "relay-naive":
        _role_relay_naive(args[0])
    elif role == "relay-http":
        trio.run(_role_relay_http, args[0])
    elif role == "derp-peer":
        trio.run(_role_derp_peer, args[0], int(args[1]), args[2])
    elif role == "idle-clients":
        trio.run(_role_idle_clients, args[0], int(args[1]), int(args[2]))
    else:
        raise SystemExit(f"unknown role {role}")


# ---------------------------------------------------------------- processes


class Child:
    """A child process running one role; killed by PID on exit."""

    def __init__(self, *args: str, stdin: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench", "_role", *args],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            text=True,
        )

    def line(self, timeout: float = 60) -> str:
        """The child's next stdout line, waiting at most ``timeout`` seconds."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().strip() if ready else ""
        if not line:
            raise RuntimeError(f"child {self.proc.args!r} did not start in {timeout} s")
        return line

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for row in fh:
                if row.startswith("VmRSS:"):
                    return int(row.split()[1])
        raise RuntimeError("no VmRSS")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    kids: list[Child] = []
    try:
        yield kids
    finally:
        for kid in kids:
            kid.close()


# ---------------------------------------------------------------- measurements


def _percentiles(samples_ns: list[int]) -> tuple[float, float]:
    samples_ns.sort()
    p50 = statistics.median(samples_ns) / 1000
    p99 = samples_ns[min(len(samples_ns) - 1, int(len(samples_ns) * 0.99))] / 1000
    return p50, p99


async def echo_rtt_samples(stream: trio.abc.Stream, count: int) -> list[int]:
    """Round-trip 64-byte messages over an echoing stream.

    Sends ``count`` plus 10% warm-up messages, waiting for each echo before
    the next; the warm-up rounds are dropped.

    Returns:
        The ``count`` round-trip times in nanoseconds.

    Raises:
        trio.BrokenResourceError: if the stream breaks.
    """
    msg = b"x" * 64
    samples: list[int] = []
    for i in range(count + count // 10):
        t0 = time.perf_counter_ns()
        await stream.send_all(msg)
        got = 0
        while got < 64:
            got += len(await stream.receive_some(64 - got))
        if i >= count // 10:
            samples.append(time.perf_counter_ns() - t0)
    return samples


async def _tcp_rtt(port: int, count: int) -> tuple[float, float]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"R")
    samples = await echo_rtt_samples(stream, count)
    await stream.aclose()
    return _percentiles(samples)


async def _tcp_throughput(port: int, seconds: float) -> float:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"T")
    block = b"t" * PACKET
    sent = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        for _ in range(16):
            await stream.send_all(block)
        sent += 16 * PACKET
    await stream.send_eof()
    reply = b""
    while len(reply) < 8:
        reply += await stream.receive_some(8 - len(reply))
    elapsed = time.perf_counter() - t0
    await stream.aclose()
    assert int.from_bytes(reply, "big") == sent
    return sent * 8 / elapsed / 1e6


async def _derp_rtt(conn: DerpConn, peer: bytes, count: int) -> tuple[float, float]:
    msg = b"P" + b"x" * 63
    samples: list[int] = []
    for i in range(count + count // 10):
        t0 = time.perf_counter_ns()
        await conn.send_packet(peer, msg)
        while True:
            ev = await conn.receive()
            if isinstance(ev, fr.RecvPacket) and ev.data[:1] == b"P":
                break
        if i >= count // 10:
            samples.append(time.perf_counter_ns() - t0)
    return _percentiles(samples)


async def _derp_throughput(conn: DerpConn, peer: bytes, seconds: float) -> float:
    block = b"T" + b"t" * (PACKET - 1)
    sent = 0
    acked = 0
    done = trio.Event()
    total_reply = 0
    t0 = time.perf_counter()
    end = t0 + seconds

    async def reader() -> None:
        nonlocal acked, total_reply
        while True:
            ev = await conn.receive()
            if not isinstance(ev, fr.RecvPacket):
                continue
            if ev.data[:1] == b"A":
                acked = int.from_bytes(ev.data[1:9], "big")
                ack_event.set()
            elif ev.data[:1] == b"D":
                total_reply = int.from_bytes(ev.data[1:9], "big")
                done.set()
                return

    ack_event = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        while time.perf_counter() < end:
            room = WINDOW - (sent - acked)
            if room <= 0:
                ack_event = trio.Event()
                await ack_event.wait()
                continue
            n = min(room, ACK_EVERY)
            await conn.send_packets([(peer, block)] * n)
            sent += n
        # Wait for everything sent to be acknowledged, then ask for the count.
        while acked < sent - sent % ACK_EVERY:
            ack_event = trio.Event()
            with trio.move_on_after(5):
                await ack_event.wait()
        await conn.send_packet(peer, b"E")
        with trio.fail_after(10):
            await done.wait()
    elapsed = time.perf_counter() - t0
    if total_reply != sent * PACKET:
        raise RuntimeError(f"peer got {total_reply} of {sent * PACKET} bytes")
    return total_reply * 8 / elapsed / 1e6


def measure_tcp(path: str, port: int, args: argparse.Namespace) -> Result:
    p50, p99 = trio.run(_tcp_rtt, port, args.rtt_count)
    mbit = trio.run(_tcp_throughput, port, args.seconds)
    return Result(path, p50, p99, mbit)


def measure_derp(path: str, transport: str, relay_port: int, args: argparse.Namespace) -> Result:
    with children() as kids:
        peer_priv = generate_private_key()
        kids.append(Child("derp-peer", transport, str(relay_port), peer_priv.hex()))
        kids[-1].line()
        peer = public_key(peer_priv)

        async def run() -> tuple[float, float, float]:
            conn = await DerpConn.handshake(
                await _dialer(transport, relay_port)(), generate_private_key()
            )
            p50, p99 = await _derp_rtt(conn, peer, args.rtt_count)
            mbit = await _derp_throughput(conn, peer, args.seconds)
            await conn.aclose()
            return p50, p99, mbit

        p50, p99, mbit = trio.run(run)
    return Result(path, p50, p99, mbit)


def measure_memory(transport: str, count: int) -> dict[str, Any]:
    with children() as kids:
        role = "relay-raw" if transport == "raw" else "relay-http"
        relay = Child(role, generate_private_key().hex())
        kids.append(relay)
        port = int(relay.line())
        # Warm up allocator and code paths with a few connections first.
        warm = Child("idle-clients", transport, str(port), "20", stdin=True)
        kids.append(warm)
        warm.line()
        time.sleep(0.3)
        before = relay.rss_kib()
        idle = Child("idle-clients", transport, str(port), str(count), stdin=True)
        kids.append(idle)
        idle.line(timeout=300)
        time.sleep(0.5)
        after = relay.rss_kib()
    per = (after - before) / count
    return {
        "transport": transport,
        "clients": count,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_conn": round(per, 2),
        "projected_10k_mib": round((before + per * 10_000) / 1024, 1),
    }


def _http_available() -> bool:
    try:
        import relay.node  # noqa: F401
    except ImportError:
        return False
    return True


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: list[Result] = []
    with children() as kids:
        echo = Child("echo-sink")
        kids.append(echo)
        echo_port = int(echo.line())
        results.append(measure_tcp("direct TCP", echo_port, args))
        if shutil.which("socat"):
            socat_port = free_port()
            proc = subprocess.Popen(
                [
                    "socat",
                    "-b65536",
                    f"TCP-LISTEN:{socat_port},bind=127.0.0.1,reuseaddr,fork",
                    f"TCP:127.0.0.1:{echo_port}",
                ]
            )
            try:
                _wait_port(socat_port)
                results.append(measure_tcp("socat -b65536", socat_port, args))
            finally:
                proc.kill()
                proc.wait(10)
        else:
            note = "socat not installed (apt-get install socat)"
            results.append(Result("socat -b65536", note=note))
        fwd = Child("trio-forward", str(echo_port))
        kids.append(fwd)
        results.append(measure_tcp("naive trio relay", int(fwd.line()), args))

    with children() as kids:
        relay = Child("relay-naive", generate_private_key().hex())
        kids.append(relay)
        results.append(measure_derp(NAIVE, "raw", int(relay.line()), args))
    with children() as kids:
        relay = Child("relay-raw", generate_private_key().hex())
        kids.append(relay)
        results.append(measure_derp("burrow DERP, raw TCP", "raw", int(relay.line()), args))

    memory: list[dict[str, Any]] = []
    if _http_available():
        with children() as kids:
            relay = Child("relay-http", generate_private_key().hex())
            kids.append(relay)
            port = int(relay.line())
            results.append(measure_derp("burrow DERP, HTTP upgrade", "upgrade", port, args))
            results.append(measure_derp("burrow DERP, WebSocket", "websocket", port, args))
    else:
        note = "relay.node not available"
        results.append(Result("burrow DERP, HTTP upgrade", note=note))
    if args.idle_clients:
        memory.append(measure_memory("raw", args.idle_clients))
        if _http_available():
            memory.append(measure_memory("upgrade", args.idle_clients))
    return {
        "results": [asdict(r) for r in results],
        "memory": memory,
        "params": {
            "rtt_count": args.rtt_count,
            "seconds": args.seconds,
            "packet": PACKET,
            "derp_window": WINDOW,
            "cpus": os.cpu_count(),
        },
    }


def _wait_port(port: int, timeout: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def table(report: dict[str, Any]) -> str:
    rows = report["results"]
    direct = rows[0]
    socat = next((r for r in rows if r["path"].startswith("socat") and r["rtt_p50_us"]), None)
    naive = next((r for r in rows if r["path"] == NAIVE and r["rtt_p50_us"]), None)

    def ratio(value: float | None, base: dict[str, Any] | None, key: str) -> str:
        if value is None or base is None or not base.get(key):
            return "-"
        return f"{value / base[key]:.2f}x"

    lines = [
        f"{'path':28} {'RTT p50':>9} {'RTT p99':>9} {'Mbit/s':>9} "
        f"{'p50/TCP':>8} {'p50/socat':>9} {'tput/TCP':>9} {'tput/socat':>10} "
        f"{'p50/naive':>9} {'tput/naive':>10}",
    ]
    for r in rows:
        if r["rtt_p50_us"] is None:
            lines.append(f"{r['path']:28} ({r['note']})")
            continue
        lines.append(
            f"{r['path']:28} {r['rtt_p50_us']:>7.0f}us {r['rtt_p99_us']:>7.0f}us "
            f"{r['throughput_mbit']:>9.0f} "
            f"{ratio(r['rtt_p50_us'], direct, 'rtt_p50_us'):>8} "
            f"{ratio(r['rtt_p50_us'], socat, 'rtt_p50_us'):>9} "
            f"{ratio(r['throughput_mbit'], direct, 'throughput_mbit'):>9} "
            f"{ratio(r['throughput_mbit'], socat, 'throughput_mbit'):>10} "
            f"{ratio(r['rtt_p50_us'], naive, 'rtt_p50_us'):>9} "
            f"{ratio(r['throughput_mbit'], naive, 'throughput_mbit'):>10}"
        )
    for m in report["memory"]:
        lines.append(
            f"idle DERP connections ({m['transport']}): {m['clients']} clients, "
            f"{m['kib_per_conn']} KiB each "
            f"(RSS {m['rss_before_kib']} -> {m['rss_after_kib']} KiB); "
            f"10,000 would be ~{m['projected_10k_mib']} MiB"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench relay", description="relay latency, throughput and memory"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--seconds", type=float, default=2.0, help="throughput run per path")
    parser.add_argument("--rtt-count", type=int, default=2000, help="ping-pongs per path")
    parser.add_argument(
        "--idle-clients", type=int, default=2000, help="idle DERP clients for memory (0: skip)"
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 60 or not 0 < args.rtt_count <= 100_000:
        parser.error("--seconds must be in (0, 60] and --rtt-count in (0, 100000]")
    if not 0 <= args.idle_clients <= 10_000:
        parser.error("--idle-clients must be in [0, 10000]")
    report = run(args)
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0
