"""tunnel.splice: copy loops with half-close and backpressure, over memory streams."""

from __future__ import annotations

import trio
import trio.testing

from tunnel.splice import copy_one_way, splice


async def test_splice_copies_both_ways_and_passes_eof() -> None:
    a_outer, a_inner = trio.testing.memory_stream_pair()
    b_inner, b_outer = trio.testing.memory_stream_pair()
    result: list[tuple[int, int]] = []

    async def run() -> None:
        result.append(await splice(a_inner, b_inner))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await a_outer.send_all(b"x" * 100_000)
            await a_outer.send_eof()
            got = b""
            while chunk := await b_outer.receive_some():
                got += chunk  # EOF from a reached b
            assert got == b"x" * 100_000
            await b_outer.send_all(b"reply")
            await b_outer.send_eof()
            back = b""
            while chunk := await a_outer.receive_some():
                back += chunk
            assert back == b"reply"
    assert result == [(100_000, 5)]


async def test_splice_ends_when_one_side_breaks() -> None:
    a_outer, a_inner = trio.testing.memory_stream_pair()
    b_inner, b_outer = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(splice, a_inner, b_inner)
            await a_outer.send_all(b"hi")
            assert await b_outer.receive_some() == b"hi"
            await b_outer.aclose()  # b side goes away: the pair ends, a sees EOF/close
            with trio.move_on_after(2):
                await a_outer.send_all(b"more")
                while await a_outer.receive_some():
                    pass


async def test_copy_waits_for_a_slow_receiver() -> None:
    """Backpressure: with a lockstep sink the copier never reads ahead more than one chunk."""
    src_send, src_recv = trio.testing.lockstep_stream_pair()
    dst_send, dst_recv = trio.testing.lockstep_stream_pair()
    sent = 0

    async def producer() -> None:
        nonlocal sent
        for _ in range(4):
            await src_send.send_all(b"y" * 1000)
            sent += 1000
        await src_send.aclose()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            nursery.start_soon(copy_one_way, src_recv, dst_send)
            await trio.testing.wait_all_tasks_blocked()
            assert sent <= 1000  # nobody reads dst: the producer is held back
            total = 0
            while chunk := await dst_recv.receive_some():
                total += len(chunk)
            assert total == 4000
