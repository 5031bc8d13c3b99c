"""peer.wsclient against trio-websocket's server on a real loopback socket."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio_websocket

from peer import wsclient

Handler = Callable[[trio_websocket.WebSocketRequest], Awaitable[None]]


async def serve(nursery: trio.Nursery, handler: Handler) -> str:
    server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
    return f"ws://127.0.0.1:{server.port}/api/v2/x/coordinate?a=1"


async def test_messages_both_ways_with_pings_answered() -> None:
    seen: list[object] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        seen.append(request.path)
        seen.append(dict(request.headers).get(b"coder-session-token"))
        ws = await request.accept()
        await ws.send_message("welcome")
        await ws.ping(b"p1")  # returns once our client answered with a pong
        seen.append(await ws.get_message())
        await ws.send_message(b"\x00" * 300_000)  # many reads' worth
        seen.append(await ws.get_message())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await serve(nursery, handler)
            ws = await wsclient.connect(url, extra_headers=[(b"Coder-Session-Token", b"t")])
            assert await ws.get_message() == "welcome"
            await ws.send_message('{"type":"node"}')
            assert await ws.get_message() == b"\x00" * 300_000
            await ws.send_message(b"bin")
            await ws.aclose()
            await ws.aclose()  # idempotent
            with pytest.raises(wsclient.ConnectionClosed):
                await ws.send_message("late")
            nursery.cancel_scope.cancel()
    assert seen == ["/api/v2/x/coordinate?a=1", b"t", '{"type":"node"}', b"bin"]


async def test_cancelled_get_message_loses_nothing() -> None:
    go = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        await go.wait()
        for i in range(5):
            await ws.send_message(f"m{i}" * 1000)
        await trio.sleep(5)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await serve(nursery, handler)
            ws = await wsclient.connect(url)
            got: list[str | bytes] = []
            for attempt in range(400):
                if attempt == 3:
                    go.set()
                with trio.move_on_after(0.001 if attempt % 2 else 0):
                    got.append(await ws.get_message())
                if len(got) == 5:
                    break
            assert got == [f"m{i}" * 1000 for i in range(5)]
            await ws.aclose()
            nursery.cancel_scope.cancel()


async def test_server_close_reason_and_then_closed() -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.aclose(code=4000, reason="bye")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await serve(nursery, handler)
            ws = await wsclient.connect(url)
            with pytest.raises(wsclient.ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason == "bye"
            with pytest.raises(wsclient.ConnectionClosed):
                await ws.get_message()
            with pytest.raises(wsclient.ConnectionClosed):
                await ws.send_message("x")
            await ws.aclose()
            nursery.cancel_scope.cancel()


async def test_message_over_the_limit_closes() -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("x" * 5000)
        with pytest.raises(trio_websocket.ConnectionClosed):
            await ws.get_message()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await serve(nursery, handler)
            ws = await wsclient.connect(url, max_message_size=1000)
            with pytest.raises(wsclient.ConnectionClosed, match="too big"):
                await ws.get_message()
            nursery.cancel_scope.cancel()


async def test_rejection_carries_status_and_body() -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        await request.reject(403, body=b'{"message":"not your workspace"}')

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await serve(nursery, handler)
            with pytest.raises(wsclient.ConnectionRejected) as info:
                await wsclient.connect(url)
            assert info.value.status_code == 403
            assert info.value.body == b'{"message":"not your workspace"}'
            nursery.cancel_scope.cancel()


async def test_not_http_and_not_listening_and_bad_url() -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"SSH-2.0-nope\r\n\r\n")
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, garbage, 0)
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(wsclient.HandshakeError):
                await wsclient.connect(f"ws://127.0.0.1:{port}/")
            nursery.cancel_scope.cancel()
        closed = trio.socket.socket()
        await closed.bind(("127.0.0.1", 0))
        free_port = closed.getsockname()[1]
        closed.close()
        with pytest.raises(OSError, match="connect"):
            await wsclient.connect(f"ws://127.0.0.1:{free_port}/")
    with pytest.raises(ValueError, match="not a WebSocket URL"):
        await wsclient.connect("http://127.0.0.1:1/")


async def test_ping_returns_on_its_pong_and_fails_once_closed() -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.get_message()  # the server answers pings while reading
        await ws.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await serve(nursery, handler)
            ws = await wsclient.connect(url)

            async def reader() -> None:
                with pytest.raises(wsclient.ConnectionClosed):
                    await ws.get_message()

            nursery.start_soon(reader)
            await ws.ping()
            await ws.ping()
            await ws.send_message("bye")
            async def ping_until_closed() -> None:
                while True:
                    await ws.ping()

            with pytest.raises(wsclient.ConnectionClosed):
                await ping_until_closed()
            nursery.cancel_scope.cancel()


async def test_pings_queued_before_a_close_end_in_connection_closed() -> None:
    """A frozen client wakes to the server's pings and its close in one read: no
    pong can be sent any more, and that is just the connection closing."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Ping, Request

    async def server(stream: trio.SocketStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            ws.receive_data(await stream.receive_some(65536))
            if any(isinstance(e, Request) for e in ws.events()):
                break
        await stream.send_all(ws.send(AcceptConnection()))
        await stream.send_all(ws.send(Ping(b"1")) + ws.send(Ping(b"2"))
                              + ws.send(CloseConnection(1008, "no pong")))
        await trio.sleep(1)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, server, 0)
            port = listeners[0].socket.getsockname()[1]
            ws = await wsclient.connect(f"ws://127.0.0.1:{port}/x")
            await trio.sleep(0.2)  # everything arrives before we read
            with pytest.raises(wsclient.ConnectionClosed, match="no pong"):
                await ws.get_message()
            nursery.cancel_scope.cancel()
