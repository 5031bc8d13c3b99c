"""peer.latency: probes of live, refusing, wrong and silent relays on 127.0.0.1."""

from __future__ import annotations

import socket
from functools import partial

import pytest
import trio

from peer.latency import ProbeError, RegionLatency, home, latency_ms, measure_all, probe
from peer.relaymap import Region


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _relay(seen: list[bytes], stream: trio.SocketStream) -> None:
    async with stream:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            data += chunk
        line = data.split(b"\r\n", 1)[0]
        seen.append(line)
        if b"/silent/" in line:
            await trio.sleep_forever()
        status = b"200 OK" if line.startswith(b"GET /derp/latency-check ") \
            or line.startswith(b"GET /pre/derp/latency-check ") else b"404 Not Found"
        await stream.send_all(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")


async def test_probes_and_measurements() -> None:
    seen: list[bytes] = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, partial(_relay, seen), 0,
                                                host="127.0.0.1"))
        base = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        with trio.fail_after(20):
            assert 0 <= await probe(base) < 5
            assert 0 <= await probe(base + "/pre/") < 5  # the prefix is kept
            for url, why in [(base + "/other", "HTTP 404"), (base + "/silent", "within"),
                             (f"http://127.0.0.1:{_dead_port()}", "cannot reach"),
                             ("ftp://x", "not an http")]:
                with pytest.raises(ProbeError, match=why):
                    await probe(url, timeout=0.5)
            results = await measure_all([Region(1, url=base), Region(2, url=base + "/other"),
                                         Region(3, url=base)], count=2, timeout=2)
        nursery.cancel_scope.cancel()
    assert [len(r.samples) for r in results] == [2, 0, 2]
    assert results[1].error == "HTTP 404"
    assert set(latency_ms(results)) == {1, 3}
    best = home(results)
    assert best is not None
    assert best.region.region_id in (1, 3)


def test_a_failed_probe_after_good_ones_disqualifies_the_region() -> None:
    r = Region(1, url="http://x")
    partial_run = RegionLatency(r, (0.001,), "HTTP 500")
    assert partial_run.median == 0.001
    assert latency_ms([partial_run]) == {}
    assert home([partial_run]) is None
