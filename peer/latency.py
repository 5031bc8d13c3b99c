"""Relay latency probes: ``GET <region url>/derp/latency-check``, timed.

Each probe is one bounded request (:func:`sdk.http.request`); the time
counted is ``head_seconds``, from sending the request to the response head
-- the round trip an idle relay adds, without the TCP/TLS connect.  Every
region of a map is measured concurrently, each with ``count`` probes in a
row; a region's first failure ends its measurement and is recorded, not
raised.  Which region to home on is decided from these numbers by
:mod:`peer.homing`.
"""

from __future__ import annotations

import ssl
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from peer.relaymap import Region
from sdk import http

PATH = "/derp/latency-check"
MAX_BODY = 64 * 1024


class ProbeError(Exception):
    """The relay did not answer the latency check (unreachable, not 200, too slow)."""


@dataclass(frozen=True)
class RegionLatency:
    """One region's probes.

    Attributes:
        region: the region probed.
        samples: the probes that answered, in seconds.
        error: why probing stopped early ("" when every probe answered).
    """

    region: Region
    samples: tuple[float, ...]
    error: str = ""

    @property
    def median(self) -> float | None:
        """Median seconds, None when nothing answered."""
        return statistics.median(self.samples) if self.samples else None


async def probe(url: str, *, timeout: float = 5.0,
                ssl_context: ssl.SSLContext | None = None) -> float:
    """Seconds from request to response head of one latency check at ``url``.

    Raises:
        ProbeError: not an http(s) URL, unreachable, no answer within
            ``timeout``, or an answer other than 200.
    """
    try:
        base = http.Url.parse(url)
        response = await http.request(base, "GET", base.path + PATH, timeout=timeout,
                                      max_body=MAX_BODY, ssl_context=ssl_context,
                                      user_agent="burrow-latency")
    except (ValueError, http.Unreachable) as exc:
        raise ProbeError(str(exc)) from None
    if response.status != 200:
        raise ProbeError(f"HTTP {response.status}")
    return response.head_seconds


async def measure(region: Region, count: int = 3, timeout: float = 5.0, *,
                  ssl_context: ssl.SSLContext | None = None) -> RegionLatency:
    """``count`` probes of one region in a row; a failure is recorded, not raised."""
    samples: list[float] = []
    try:
        for _ in range(count):
            samples.append(await probe(region.url, timeout=timeout, ssl_context=ssl_context))
    except ProbeError as exc:
        return RegionLatency(region, tuple(samples), str(exc) or "no answer")
    return RegionLatency(region, tuple(samples))


async def measure_all(regions: Sequence[Region], count: int = 3, timeout: float = 5.0, *,
                      ssl_context: ssl.SSLContext | None = None) -> list[RegionLatency]:
    """Every region, concurrently; results in the order of ``regions``."""
    results: list[RegionLatency | None] = [None] * len(regions)

    async def one(i: int) -> None:
        results[i] = await measure(regions[i], count, timeout, ssl_context=ssl_context)

    async with trio.open_nursery() as nursery:
        for i in range(len(regions)):
            nursery.start_soon(one, i)
    return [r for r in results if r is not None]


def latency_ms(results: Sequence[RegionLatency]) -> dict[int, float]:
    """Median milliseconds of each region whose every probe answered."""
    return {r.region.region_id: r.median * 1000.0 for r in results
            if r.median is not None and not r.error}


def home(results: Sequence[RegionLatency]) -> RegionLatency | None:
    """The region with the lowest median latency (None if none answered) --
    the one-shot choice ``burrow netcheck`` reports, without hysteresis."""
    answered = [r for r in results if r.median is not None and not r.error]
    return min(answered, key=lambda r: r.median or 0.0) if answered else None
