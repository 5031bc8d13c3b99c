"""DerpConn against a scripted fake relay on memory streams (and a trickling one)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from derp import frames as f
from derp import handshake as hs
from derp.conn import DerpConn
from derp.errors import DerpConnectionClosed, DerpProtocolError, DerpTimeoutError
from derp.keys import generate_private_key, public_key
from derp.server import DerpServer

SERVER = generate_private_key()
SERVER_PUB = public_key(SERVER)


class FakeRelay:
    """The server end of a memory stream pair, driven frame by frame by the test."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = f.FrameDecoder()

    async def send(self, *frames: f.Frame | bytes) -> None:
        await self.stream.send_all(
            b"".join(fr if isinstance(fr, bytes) else f.encode(fr) for fr in frames)
        )

    async def read(self) -> f.Frame:
        while (frame := self.decoder.next_frame()) is None:
            data = await self.stream.receive_some(65536)
            assert data, "client closed"
            self.decoder.feed(data)
        return frame

    async def accept(self) -> hs.ClientInfoPayload:
        await self.send(hs.server_key_frame(SERVER_PUB))
        info = await self.read()
        assert isinstance(info, f.ClientInfo)
        payload = hs.open_client_info(info, SERVER)
        await self.send(hs.build_server_info(SERVER, payload.key))
        return payload


async def pair(**kwargs: object) -> tuple[DerpConn, FakeRelay]:
    client_end, server_end = trio.testing.memory_stream_pair()
    relay = FakeRelay(server_end)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay.accept)
        conn = await DerpConn.handshake(client_end, generate_private_key(), **kwargs)  # type: ignore[arg-type]
    return conn, relay


async def test_handshake_and_events() -> None:
    with trio.fail_after(5):
        conn, relay = await pair()
        assert conn.server_key == SERVER_PUB
        assert conn.server_info == {"version": 2}
        src = bytes([7]) * 32
        await relay.send(
            f.RecvPacket(src, b"data"),
            f.frame_header(0x7E, 3) + b"???",  # unknown: skipped
            f.KeepAlive(),
            f.Health("degraded"),
            f.PeerGone(src, f.PeerGoneReason.NOT_HERE),
            f.PeerPresent(src),
            f.Restarting(100, 200),
            f.Ping(b"pingpong"),
        )
        assert await conn.receive() == f.RecvPacket(src, b"data")
        assert await conn.receive() == f.KeepAlive()
        assert await conn.receive() == f.Health("degraded")
        assert await conn.receive() == f.PeerGone(src, f.PeerGoneReason.NOT_HERE)
        assert await conn.receive() == f.PeerPresent(src)
        assert await conn.receive() == f.Restarting(100, 200)
        assert await conn.receive() == f.Ping(b"pingpong")
        assert await relay.read() == f.Pong(b"pingpong")  # answered by receive()


async def test_sends_are_well_formed() -> None:
    with trio.fail_after(5):
        conn, relay = await pair(mesh_key=bytes(32))
        k1, k2 = bytes([1]) * 32, bytes([2]) * 32
        await conn.send_packet(k1, b"one")
        await conn.send_packets([(k1, b"two"), (k2, b"three")])
        await conn.note_preferred(True)
        await conn.watch_conns()
        await conn.forward_packet(k1, k2, b"fwd")
        await conn.forward_packets([(k2, k1, b"f2")])
        await conn.close_peer(k2)
        want = [
            f.SendPacket(k1, b"one"),
            f.SendPacket(k1, b"two"),
            f.SendPacket(k2, b"three"),
            f.NotePreferred(True),
            f.WatchConns(),
            f.ForwardPacket(k1, k2, b"fwd"),
            f.ForwardPacket(k2, k1, b"f2"),
            f.ClosePeer(k2),
        ]
        assert [await relay.read() for _ in want] == want
        with pytest.raises(ValueError, match="exceeds"):
            await conn.send_packet(k1, b"x" * (f.MAX_PACKET_SIZE + 1))
        with pytest.raises(ValueError, match="32 bytes"):
            await conn.send_packets([(b"short", b"")])


async def test_ping_needs_receive_loop_and_measures_rtt() -> None:
    with trio.fail_after(5):
        conn, relay = await pair()

        async def echo_pings() -> None:
            while True:
                frame = await relay.read()
                if isinstance(frame, f.Ping):
                    await relay.send(f.Pong(frame.data))

        async def receive_loop() -> None:
            while True:
                await conn.receive()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_pings)
            nursery.start_soon(receive_loop)
            assert await conn.ping() >= 0
            nursery.cancel_scope.cancel()


async def test_ping_timeout(autojump_clock: trio.abc.Clock) -> None:
    conn, _ = await pair()
    with pytest.raises(DerpTimeoutError):
        await conn.ping(timeout=1)


async def test_ping_fails_when_connection_closes() -> None:
    with trio.fail_after(5):
        conn, relay = await pair()

        async def receive_loop() -> None:
            for _ in range(100):
                try:
                    await conn.receive()
                except DerpConnectionClosed:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_loop)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(relay.stream.aclose)
            with pytest.raises(DerpConnectionClosed):
                await conn.ping(timeout=3)


async def test_oversized_frame_from_relay_is_refused() -> None:
    with trio.fail_after(5):
        conn, relay = await pair()
        await relay.send(f.frame_header(f.FrameType.HEALTH, f.MAX_FRAME_SIZE + 1))
        with pytest.raises(DerpProtocolError) as info:
            await conn.receive()
        assert info.value.reason == "frame_too_large"


@pytest.mark.parametrize("case", ["timeout", "eof", "wrong_key", "not_server_key", "bad_info"])
async def test_handshake_failures(case: str, autojump_clock: trio.abc.Clock) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    relay = FakeRelay(server_end)
    expected: type[Exception] = DerpProtocolError
    kwargs: dict[str, object] = {}
    if case == "timeout":
        expected = DerpTimeoutError
    elif case == "eof":
        await relay.stream.aclose()
        expected = DerpConnectionClosed
    elif case == "wrong_key":
        await relay.send(hs.server_key_frame(SERVER_PUB))
        kwargs["expect_server_key"] = bytes(32)
    elif case == "not_server_key":
        await relay.send(f.KeepAlive())
    else:
        await relay.send(hs.server_key_frame(SERVER_PUB), f.ServerInfo(b"\0" * 24, b"junk" * 8))
    with pytest.raises(expected):
        await DerpConn.handshake(client_end, generate_private_key(), timeout=2, **kwargs)  # type: ignore[arg-type]
    # The stream was closed on failure.
    with pytest.raises(trio.ClosedResourceError):
        await client_end.send_all(b"x")


async def test_server_over_a_one_byte_trickle() -> None:
    """Every frame split at every byte, through the real server and client."""
    server = DerpServer(generate_private_key())

    def trickle_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        a_send, b_recv = trio.testing.memory_stream_one_way_pair()
        b_send, a_recv = trio.testing.memory_stream_one_way_pair()
        for send, recv in ((a_send, b_recv), (b_send, a_recv)):
            send.send_all_hook = _pump_one_byte(send, recv)
        return (
            trio.StapledStream(a_send, a_recv),
            trio.StapledStream(b_send, b_recv),
        )

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            conns = []
            for _ in range(2):
                client_end, server_end = trickle_pair()
                nursery.start_soon(server.serve, server_end)
                conns.append(await DerpConn.handshake(client_end, generate_private_key()))
            a, b = conns
            await a.send_packets([(b.public_key, b"trickled %d" % i) for i in range(3)])
            for i in range(3):
                assert await b.receive() == f.RecvPacket(a.public_key, b"trickled %d" % i)
            nursery.cancel_scope.cancel()


def _pump_one_byte(
    send: trio.testing.MemorySendStream, recv: trio.testing.MemoryReceiveStream
) -> object:
    async def hook() -> None:
        while trio.testing.memory_stream_pump(send, recv, max_bytes=1):
            await trio.lowlevel.checkpoint()

    return hook


async def test_plain_socket_fast_paths_respect_replayed_bytes() -> None:
    """On plain TCP DerpConn reads and writes the socket directly; bytes a
    PrefixedStream still replays come first, then the socket's, in order."""
    from derp.conn import raw_socket, replays_bytes
    from web.prefixed import PrefixedStream

    left, right = trio.socket.socketpair()
    ours, theirs = trio.SocketStream(left), trio.SocketStream(right)
    src = public_key(generate_private_key())
    stream = PrefixedStream(f.encode_recv_packet(src, b"replayed"), ours)
    assert raw_socket(stream) is ours.socket
    assert raw_socket(trio.testing.memory_stream_pair()[0]) is None
    assert replays_bytes(stream)
    key = generate_private_key()
    conn = DerpConn(stream, key, public_key(generate_private_key()), f.FrameDecoder())
    with trio.fail_after(5):
        await theirs.send_all(f.encode_recv_packet(src, b"from the socket"))
        first = await conn.receive()
        assert isinstance(first, f.RecvPacket)
        assert first.data == b"replayed"
        assert not replays_bytes(stream)
        second = await conn.receive()
        assert isinstance(second, f.RecvPacket)
        assert second.data == b"from the socket"
        # Sending: a direct write, whole frames on the wire.
        dst = public_key(generate_private_key())
        await conn.send_packet(dst, b"out")
        assert conn.write_now(f.encode_send_packet(dst, b"now")) > 0
        want = f.encode_send_packet(dst, b"out") + f.encode_send_packet(dst, b"now")
        got = b""
        while len(got) < len(want):
            got += await theirs.receive_some()
        assert got == want
        await theirs.aclose()
        with pytest.raises(DerpConnectionClosed):
            await conn.receive()
        await conn.aclose()
