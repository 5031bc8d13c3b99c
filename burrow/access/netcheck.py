"""Relay latency probes: ``GET <region url>/derp/latency-check``, timed.

Each probe opens a connection (TCP, TLS for https), then times one request
to its response -- the round trip an idle relay adds, without the connect.
The home region is the one with the lowest median.
"""

from __future__ import annotations

import ssl
import statistics
import urllib.parse
from dataclasses import dataclass

import h11
import trio

from peer.relaymap import Region

PATH = "/derp/latency-check"


@dataclass(frozen=True)
class RegionLatency:
    region: Region
    samples: tuple[float, ...]  # seconds
    error: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


async def probe_once(url: str, *, timeout: float = 5.0) -> float:
    """Seconds from request to response for one latency check.

    Raises:
        OSError, trio.BrokenResourceError, h11.ProtocolError: the relay could not be reached.
        trio.TooSlowError: no answer within ``timeout``.
        ValueError: ``url`` is not http(s), or the answer is not 200.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    with trio.fail_after(timeout):
        stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, port)
        if tls:
            stream = trio.SSLStream(stream, ssl.create_default_context(),
                                    server_hostname=parts.hostname)
            await stream.do_handshake()
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            request = conn.send(h11.Request(
                method="GET", target=parts.path.rstrip("/") + PATH,
                headers=[("Host", parts.netloc), ("Connection", "close"),
                         ("User-Agent", "burrow-netcheck")],
            )) + conn.send(h11.EndOfMessage())
            start = trio.current_time()
            await stream.send_all(request)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        raise trio.BrokenResourceError("connection closed before a response")
                    conn.receive_data(bytes(data))
                    continue
                if isinstance(event, h11.Response):
                    elapsed = trio.current_time() - start
                    if event.status_code != 200:
                        raise ValueError(f"HTTP {event.status_code}")
                    return elapsed


async def measure(region: Region, count: int = 3, timeout: float = 5.0) -> RegionLatency:
    """``count`` probes of one region; a failure is recorded, not raised."""
    samples: list[float] = []
    try:
        for _ in range(count):
            samples.append(await probe_once(region.url, timeout=timeout))
    except trio.TooSlowError:
        return RegionLatency(region, tuple(samples), f"no answer within {timeout:g} s")
    except (OSError, trio.BrokenResourceError, h11.ProtocolError, ValueError) as exc:
        return RegionLatency(region, tuple(samples), str(exc) or type(exc).__name__)
    return RegionLatency(region, tuple(samples))


async def measure_all(regions: tuple[Region, ...], count: int = 3,
                      timeout: float = 5.0) -> list[RegionLatency]:
    """Every region, concurrently, in relay-map order."""
    results: list[RegionLatency | None] = [None] * len(regions)

    async def one(i: int) -> None:
        results[i] = await measure(regions[i], count, timeout)

    async with trio.open_nursery() as nursery:
        for i in range(len(regions)):
            nursery.start_soon(one, i)
    return [r for r in results if r is not None]


def home(results: list[RegionLatency]) -> RegionLatency | None:
    """The region with the lowest median latency (None if none answered)."""
    answered = [r for r in results if r.median is not None and not r.error]
    return min(answered, key=lambda r: r.median or 0.0) if answered else None
