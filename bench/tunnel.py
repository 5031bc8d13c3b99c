"""``python -m bench.tunnel``: tunnel throughput and RTT, beside its baselines.

One run measures, all on loopback and in the same run:

* direct TCP (driver -> echo/sink process) — the ceiling;
* raw relay: DERP packets through burrow's relay node (HTTP upgrade), with a
  64-packet window, as in ``bench relay``;
* a 64-byte ping-pong between two ``DerpClient``s (no tunnel): the floor
  the tunnel's relay RTT stands on;
* the tunnel through the same relay: one stream, 8 concurrent streams, and a
  64-byte ping-pong on one stream;
* the tunnel over the direct TCP path (same measurements).

Three processes: the relay node, the far tunnel peer (``_peer`` role: an
``Endpoint`` serving ``echo`` and ``sink``) and the driver (this process).
Ratios are against direct TCP (throughput) and the raw relay (RTT).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import trio

from bench.relay import (
    Child,
    _percentiles,
    children,
    echo_rtt_samples,
    measure_derp,
    measure_tcp,
)
from derp.client import DerpClient, Packet
from derp.keys import generate_private_key, key_from_hex, public_key
from tunnel.derp_path import DerpPath
from tunnel.endpoint import Endpoint
from tunnel.stream import TunnelStream

BLOCK = 64 << 10


# ---------------------------------------------------------------- far peer


async def _peer(url: str, private_hex: str, driver_hex: str) -> None:
    client = DerpClient(url, key_from_hex(private_hex))

    async def handler(peer: bytes, service: str, stream: TunnelStream) -> None:
        try:
            if service == "echo":
                while data := await stream.receive_some():
                    await stream.send_all(data)
            elif service == "sink":
                total = 0
                while data := await stream.receive_some():
                    total += len(data)
                await stream.send_all(total.to_bytes(8, "big"))
            await stream.send_eof()
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        ep = Endpoint(key_from_hex(private_hex), relay=DerpPath(client))
        ep.set_peer(key_from_hex(driver_hex))
        await nursery.start(ep.run)
        _host, port = await ep.listen_direct()
        sys.stdout.write(f"{port}\n")
        sys.stdout.flush()
        await ep.serve(handler)


async def _derp_echo(url: str, private_hex: str) -> None:
    """A DerpClient that echoes every packet: the floor under the tunnel."""
    client = DerpClient(url, key_from_hex(private_hex))
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        while True:
            event = await client.receive()
            if isinstance(event, Packet):
                await client.send(event.src, event.data)


async def _derp_client_rtt(url: str, peer: bytes, count: int) -> tuple[float, float]:
    client = DerpClient(url, generate_private_key())
    msg = b"x" * 64
    samples: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        for i in range(count + count // 10):
            t0 = time.perf_counter_ns()
            await client.send(peer, msg)
            with trio.fail_after(10):
                while not isinstance(await client.receive(), Packet):
                    pass
            if i >= count // 10:
                samples.append(time.perf_counter_ns() - t0)
        nursery.cancel_scope.cancel()
    return _percentiles(samples)


# ---------------------------------------------------------------- driver


async def _rtt(ep: Endpoint, peer: bytes, count: int) -> tuple[float, float]:
    stream = await ep.open_stream(peer, "echo")
    samples = await echo_rtt_samples(stream, count)
    await stream.send_eof()
    await stream.aclose()
    return _percentiles(samples)


async def _sink(ep: Endpoint, peer: bytes, seconds: float) -> int:
    stream = await ep.open_stream(peer, "sink")
    block = b"t" * BLOCK
    sent = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(16):
            await stream.send_all(block)
        sent += 16 * BLOCK
    await stream.send_eof()
    reply = b""
    while len(reply) < 8:
        chunk = await stream.receive_some(8 - len(reply))
        if not chunk:
            break
        reply += chunk
    await stream.aclose()
    if int.from_bytes(reply, "big") != sent:
        raise RuntimeError(f"sink got {int.from_bytes(reply, 'big')} of {sent} bytes")
    return sent


async def _throughput(ep: Endpoint, peer: bytes, seconds: float, streams: int) -> float:
    totals: list[int] = []

    async def one() -> None:
        totals.append(await _sink(ep, peer, seconds))

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(one)
    return sum(totals) * 8 / (time.perf_counter() - t0) / 1e6


async def _drive(
    url: str, key: bytes, peer: bytes, direct_port: int, args: Any
) -> list[dict[str, Any]]:
    client = DerpClient(url, key)
    rows: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        ep = Endpoint(key, relay=DerpPath(client))
        ep.set_peer(peer)
        await nursery.start(ep.run)
        for path in ("relay", "direct"):
            if path == "direct":
                ep.set_peer(peer, direct_endpoints=[("127.0.0.1", direct_port)])
                with trio.fail_after(10):
                    for _ in range(1000):
                        if ep.path_of(peer) == "direct":
                            break
                        await trio.sleep(0.01)
            with trio.fail_after(60):
                await _rtt(ep, peer, 20)  # warm up: handshake, first stream
                p50, p99 = await _rtt(ep, peer, args.rtt_count)
                one = await _throughput(ep, peer, args.seconds, 1)
                eight = await _throughput(ep, peer, args.seconds, 8)
            assert ep.path_of(peer) == path, f"measured over {ep.path_of(peer)}, not {path}"
            rows.append(
                {
                    "path": f"tunnel via {path}",
                    "rtt_p50_us": p50,
                    "rtt_p99_us": p99,
                    "throughput_mbit": one,
                    "throughput_8_mbit": eight,
                }
            )
        nursery.cancel_scope.cancel()
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    with children() as kids:
        relay = Child("relay-http", generate_private_key().hex())
        kids.append(relay)
        relay_port = int(relay.line())
        url = f"http://127.0.0.1:{relay_port}"
        sink = Child("echo-sink")
        kids.append(sink)
        tcp_port = int(sink.line())
        tcp = measure_tcp("direct TCP", tcp_port, args)
        raw = measure_derp("raw relay (DERP upgrade)", "derp", relay_port, args)
        driver_key, peer_key = generate_private_key(), generate_private_key()
        import subprocess

        echo_key = generate_private_key()
        echo = subprocess.Popen(
            [sys.executable, "-m", "bench.tunnel", "_derp_echo", url, echo_key.hex()],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert echo.stdout is not None
            echo.stdout.readline()
            client_p50, client_p99 = trio.run(
                _derp_client_rtt, url, public_key(echo_key), args.rtt_count
            )
        finally:
            echo.kill()
            echo.wait(10)

        peer_proc = subprocess.Popen(
            [
                sys.executable, "-m", "bench.tunnel", "_peer",
                url, peer_key.hex(), public_key(driver_key).hex(),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert peer_proc.stdout is not None
            direct_port = int(peer_proc.stdout.readline())
            rows = trio.run(_drive, url, driver_key, public_key(peer_key), direct_port, args)
        finally:
            peer_proc.kill()
            peer_proc.wait(10)
    base = [
        {"path": r.path, "rtt_p50_us": r.rtt_p50_us, "rtt_p99_us": r.rtt_p99_us,
         "throughput_mbit": r.throughput_mbit}
        for r in (tcp, raw)
    ]
    base.append({"path": "relay via DerpClient (RTT)", "rtt_p50_us": client_p50,
                 "rtt_p99_us": client_p99, "throughput_mbit": None})
    tcp_mbit = tcp.throughput_mbit or 1.0
    raw_rtt = raw.rtt_p50_us or 1.0
    for row in rows:
        row["x_direct_tcp"] = row["throughput_mbit"] / tcp_mbit
        row["x8_direct_tcp"] = row["throughput_8_mbit"] / tcp_mbit
        row["rtt_x_raw_relay"] = row["rtt_p50_us"] / raw_rtt
        row["rtt_x_derp_client"] = row["rtt_p50_us"] / client_p50
    return {"baselines": base, "tunnel": rows, "seconds": args.seconds,
            "rtt_count": args.rtt_count}


def table(report: dict[str, Any]) -> str:
    out = [
        f"{'path':28} {'RTT p50/p99 us':>16} {'1 stream Mbit/s':>16} {'8 streams':>10}"
        f" {'x TCP (1/8)':>13} {'RTT x raw relay':>16} {'x client':>10}"
    ]
    for r in report["baselines"]:
        mbit = "" if r["throughput_mbit"] is None else f"{r['throughput_mbit']:16.0f}"
        out.append(f"{r['path']:28} {r['rtt_p50_us']:7.0f}/{r['rtt_p99_us']:<8.0f} {mbit}")
    for r in report["tunnel"]:
        out.append(
            f"{r['path']:28} {r['rtt_p50_us']:7.0f}/{r['rtt_p99_us']:<8.0f}"
            f" {r['throughput_mbit']:16.0f} {r['throughput_8_mbit']:10.0f}"
            f" {r['x_direct_tcp']:6.3f}/{r['x8_direct_tcp']:<6.3f} {r['rtt_x_raw_relay']:16.2f}"
            f" {r['rtt_x_derp_client']:10.2f}"
        )
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if argv[:1] == ["_derp_echo"]:
        trio.run(_derp_echo, argv[1], argv[2])
        return 0
    if argv[:1] == ["_peer"]:
        url, private_hex, driver_hex = argv[1:4]
        trio.run(_peer, url, private_hex, driver_hex)
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench tunnel",
                                     description="tunnel throughput and RTT vs baselines")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--seconds", type=float, default=3.0, help="throughput run per case")
    parser.add_argument("--rtt-count", type=int, default=500, help="ping-pongs per path")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 60 or not 0 < args.rtt_count <= 100_000:
        parser.error("--seconds must be in (0, 60] and --rtt-count in (0, 100000]")
    report = run(args)
    sys.stdout.write((json.dumps(report, indent=2) if args.json else table(report)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
