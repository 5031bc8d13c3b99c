"""The server's promise: whatever a peer sends, ``serve`` returns normally and
only that connection ends, with the reason counted."""

from __future__ import annotations

import socket
import struct

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from derp import frames as f
from derp import handshake as hs
from derp.keys import generate_private_key, public_key
from derp.server import DerpServer

SERVER_KEY = generate_private_key()
CLIENT_KEY = generate_private_key()


async def _serve_script(server: DerpServer, handshake: bool, garbage: bytes, close: bool) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve, server_end)
            wire = b""
            if handshake:
                wire = f.encode(hs.build_client_info(CLIENT_KEY, public_key(SERVER_KEY)))
            await client_end.send_all(wire + garbage)
            if close:
                await client_end.aclose()
            else:
                # Drain what the server says until it closes (or goes quiet).
                with trio.move_on_after(0.02):
                    while await client_end.receive_some(65536):
                        pass
                await client_end.aclose()


@settings(max_examples=100, deadline=None)
@given(st.booleans(), st.binary(max_size=200), st.booleans())
def test_serve_never_raises(handshake: bool, garbage: bytes, close: bool) -> None:
    server = DerpServer(SERVER_KEY, handshake_timeout=1)
    trio.run(_serve_script, server, handshake, garbage, close)
    assert server.metrics.clients_connected == 0
    for reason in server.metrics.protocol_errors:
        assert isinstance(reason, str)
        assert reason


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0x20), st.binary(max_size=70)), max_size=6))
def test_well_framed_garbage_after_handshake(parts: list[tuple[int, bytes]]) -> None:
    server = DerpServer(SERVER_KEY, handshake_timeout=1)
    garbage = b"".join(f.frame_header(t, len(p)) + p for t, p in parts)
    trio.run(_serve_script, server, True, garbage, False)
    assert server.metrics.clients_connected == 0
    assert server.metrics.clients_total == 1


async def test_immediate_eof_and_reset() -> None:
    server = DerpServer(SERVER_KEY)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, server.serve, listeners)
            s = await trio.open_tcp_stream("127.0.0.1", port)
            await s.aclose()
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", port))



            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST
            while sum(server.metrics.closes.values()) < 2:
                await trio.sleep(0.01)
            assert server.metrics.clients_connected == 0
            nursery.cancel_scope.cancel()
