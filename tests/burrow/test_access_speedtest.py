"""The speedtest service: wire format with plain bytes, client against the reference server."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from burrow.access import speedtest
from burrow.access import speedtest_proto as proto


def test_request_round_trip_and_errors() -> None:
    data = proto.encode_request(proto.UPLOAD, 12345)
    assert len(data) == proto.REQUEST_SIZE == 13
    assert data[:4] == b"BST1"
    assert proto.decode_request(data) == proto.Request(proto.UPLOAD, 12345)
    for bad in (data[:-1], b"XXXX" + data[4:], data[:4] + b"\x03" + data[5:],
                data[:5] + bytes(8), data + b"x"):
        with pytest.raises(proto.SpeedtestProtocolError):
            proto.decode_request(bad)
    for mode, n in ((3, 1), (proto.UPLOAD, 0), (proto.DOWNLOAD, proto.MAX_LENGTH + 1)):
        with pytest.raises(proto.SpeedtestProtocolError):
            proto.encode_request(mode, n)
    assert proto.decode_count(proto.encode_count(7)) == 7
    with pytest.raises(proto.SpeedtestProtocolError):
        proto.decode_count(b"1234567")


def _pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    return trio.testing.memory_stream_pair()


async def test_upload_and_download_against_the_server() -> None:
    for fn, direction in ((speedtest.upload, "upload"), (speedtest.download, "download")):
        client, server = _pair()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(speedtest.serve, server)
                result = await fn(client, 3 * speedtest.CHUNK + 17)
                await client.aclose()
        assert result.direction == direction
        assert result.nbytes == 3 * speedtest.CHUNK + 17
        assert result.seconds >= 0


async def test_short_answers_are_speedtest_errors() -> None:
    client, server = _pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def liar() -> None:
                await speedtest.receive_exactly(server, proto.REQUEST_SIZE)
                await server.send_all(b"0123")
                await server.aclose()

            nursery.start_soon(liar)
            with pytest.raises(speedtest.SpeedtestError):
                await speedtest.download(client, 100)


async def test_server_closes_on_garbage_without_raising() -> None:
    client, server = _pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(speedtest.serve, server)
            await client.send_all(b"GET / HTTP/1.1\r\n")
            assert await client.receive_some() == b""
