"""derp.websocket.WebSocketStream.

Conformance: ``check_two_way_stream`` (a WebSocket has no half-close -- a Close
frame ends both directions -- so the half-closeable check does not apply).
"""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing
from wsproto.frame_protocol import FrameProtocol

from derp.websocket import WebSocketStream, accept_token


async def ws_pair() -> tuple[WebSocketStream, WebSocketStream]:
    a, b = trio.testing.memory_stream_pair()
    return WebSocketStream(a, client=True), WebSocketStream(b, client=False)


async def clogged_ws_pair() -> tuple[WebSocketStream, WebSocketStream]:
    a, b = trio.testing.lockstep_stream_pair()
    return WebSocketStream(a, client=True), WebSocketStream(b, client=False)


async def test_two_way_stream_conformance() -> None:
    await trio.testing.check_two_way_stream(ws_pair, clogged_ws_pair)


async def test_frames_spanning_and_joining_messages_reassemble() -> None:
    a, b = trio.testing.memory_stream_pair()
    client = WebSocketStream(a, client=True)
    server = WebSocketStream(b, client=False)
    payload = os.urandom(300_000)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            async def send() -> None:
                for i in range(0, len(payload), 7777):
                    await client.send_all(payload[i : i + 7777])
            nursery.start_soon(send)
            got = bytearray()
            while len(got) < len(payload):
                got += await server.receive_some(1000)
    assert got == payload


async def test_trickled_byte_by_byte() -> None:
    a, b = trio.testing.memory_stream_pair()
    client = WebSocketStream(a, client=True)
    server = WebSocketStream(b, client=False)
    wire = FrameProtocol(True, []).send_data(b"hello") + FrameProtocol(True, []).ping(b"p")
    wire += FrameProtocol(True, []).send_data(b"world")
    with trio.fail_after(5):
        for byte in wire:
            await a.send_all(bytes([byte]))
        got = b""
        while len(got) < 10:
            got += await server.receive_some()
        assert got == b"helloworld"
        # the ping was answered with a pong on the wire
        pong = await client.transport.receive_some()
        assert pong[0] & 0x0F == 0xA


async def test_trailing_bytes_after_handshake_are_used() -> None:
    a, b = trio.testing.memory_stream_pair()
    wire = bytes(FrameProtocol(True, []).send_data(b"early"))
    server = WebSocketStream(b, client=False, trailing=wire)
    with trio.fail_after(2):
        assert await server.receive_some() == b"early"
    del a


async def test_text_message_breaks_the_stream() -> None:
    a, b = trio.testing.memory_stream_pair()
    server = WebSocketStream(b, client=False)
    await a.send_all(FrameProtocol(True, []).send_data("text"))
    with trio.fail_after(2), pytest.raises(trio.BrokenResourceError, match="text"):
        await server.receive_some()


async def test_eof_without_close_frame_is_broken() -> None:
    a, b = trio.testing.memory_stream_pair()
    server = WebSocketStream(b, client=False)
    await a.aclose()
    with trio.fail_after(2), pytest.raises(trio.BrokenResourceError):
        await server.receive_some()


async def test_garbage_is_a_protocol_error() -> None:
    a, b = trio.testing.memory_stream_pair()
    server = WebSocketStream(b, client=False)
    await a.send_all(b"\x0f\x00")  # reserved opcode 0xf
    with trio.fail_after(2), pytest.raises(trio.BrokenResourceError, match="protocol"):
        await server.receive_some()


def test_accept_token_rfc6455_example() -> None:
    assert accept_token(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


async def test_pong_waits_behind_a_blocked_send_and_follows_it() -> None:
    from derp.wsframes import FrameDecoder, Ping, Pong, encode_control

    raw, inner = trio.testing.lockstep_stream_pair()
    server = WebSocketStream(inner, client=False)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_all, b"d" * 1000)  # blocks: nobody reads yet
            await trio.testing.wait_all_tasks_blocked()

            async def read_one_then_stop() -> None:
                with pytest.raises(trio.BrokenResourceError):
                    await server.receive_some()

            nursery.start_soon(read_one_then_stop)
            await raw.send_all(encode_control(Ping(b"p"), masked=True))
            await trio.testing.wait_all_tasks_blocked()
            decoder = FrameDecoder(expect_masked=False)
            payload, events = bytearray(), []
            while not events:
                data, evs = decoder.feed(await raw.receive_some())
                payload += data
                events += evs
            assert payload == b"d" * 1000
            assert events == [Pong(b"p")]
            await raw.aclose()
