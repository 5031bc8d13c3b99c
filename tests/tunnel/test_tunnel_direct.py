"""Direct-path framing over a trio memory stream, fed whole and byte by byte."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tunnel import direct
from tunnel.path import Datagram

KEY = bytes(range(32))


async def _collect(link: direct.DirectLink, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        ev = await link.receive()
        assert isinstance(ev, Datagram)
        assert ev.src == KEY
        out.append(ev.data)
    return out


@pytest.mark.parametrize("trickle", [False, True])
async def test_hello_then_datagrams(trickle: bool) -> None:
    if trickle:
        left, right = trio.testing.lockstep_stream_pair()
    else:
        left, right = trio.testing.memory_stream_pair()
    datagrams = [b"", b"a", b"x" * 65536, bytes(range(256))]
    wire = direct.hello(KEY) + b"".join(len(d).to_bytes(4, "big") + d for d in datagrams)

    async def writer() -> None:
        if trickle:
            for i in range(0, len(wire), 7):
                await left.send_all(wire[i : i + 7])
        else:
            await left.send_all(wire)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            link = await direct.read_hello(right)
            assert link.peer == KEY
            assert await _collect(link, len(datagrams)) == datagrams


async def test_bad_hello_and_oversized_datagram() -> None:
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(b"NOPE" + bytes(33))
    with trio.fail_after(5), pytest.raises(direct.DirectLinkError):
        await direct.read_hello(right)
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(direct.hello(KEY) + (65537).to_bytes(4, "big"))
    link = await direct.read_hello(right)
    with trio.fail_after(5), pytest.raises(direct.DirectLinkError):
        await link.receive()


async def test_eof_ends_the_link() -> None:
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(direct.hello(KEY) + b"\x00\x00")
    await left.aclose()
    link = await direct.read_hello(right)
    with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
        await link.receive()
    assert link.failed
