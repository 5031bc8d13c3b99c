"""Two meshed DERP servers over real loopback TCP: forwarding, forgetting, redialing."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import trio

from derp import frames as f
from derp.conn import DerpConn
from derp.errors import DerpConnectionClosed
from derp.keys import generate_private_key
from derp.mesh import run_mesh_link
from derp.server import DerpServer
from tests.derp.derp_events import next_of, next_packet

MESH = bytes(range(100, 132))


class Node:
    """A DerpServer on a TCP listener that can be killed and restarted (same key)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.private_key = generate_private_key()
        self.port = 0
        self.server = DerpServer(self.private_key, mesh_key=MESH)
        self._scope: trio.CancelScope | None = None
        self.siblings: list[Node] = []
        self.ping_interval = 15.0
        self.frozen = False  # when set, every stream this node serves stops dead

    async def start(self, nursery: trio.Nursery) -> None:
        self.server = DerpServer(self.private_key, mesh_key=MESH)
        self._scope = await nursery.start(self._run)

    async def _run(self, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def handler(stream: trio.SocketStream) -> None:
                    await self.server.serve(Freezable(stream, self))

                listeners = await nursery.start(
                    functools.partial(trio.serve_tcp, handler, self.port, host="127.0.0.1")
                )
                self.port = listeners[0].socket.getsockname()[1]
                # Mesh links live and die with this node; each dials through the
                # sibling object, so a restarted sibling's new port is used.
                for sib in self.siblings:
                    nursery.start_soon(
                        functools.partial(
                            run_mesh_link,
                            self.server,
                            sib.dialer(),
                            private_key=self.private_key,
                            name=sib.name,
                            min_backoff=0.05,
                            max_backoff=0.2,
                            ping_interval=self.ping_interval,
                            ping_timeout=self.ping_interval,
                        )
                    )
                task_status.started(scope)

    def kill(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    def dialer(self) -> Callable[[], trio.abc.Stream]:
        async def dial() -> trio.abc.Stream:
            return await trio.open_tcp_stream("127.0.0.1", self.port)

        return dial  # type: ignore[return-value]

    async def connect(self, key: bytes | None = None) -> DerpConn:
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        return await DerpConn.handshake(stream, key or generate_private_key())


class Freezable(trio.abc.Stream):
    """A stream that hangs (no error, no EOF) once its node is frozen: a relay
    wedged without closing its TCP connections."""

    def __init__(self, inner: trio.abc.Stream, node: Node) -> None:
        self.inner = inner
        self.node = node

    async def _hang_if_frozen(self) -> None:
        if self.node.frozen:
            await trio.sleep_forever()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._hang_if_frozen()
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await self._hang_if_frozen()
        data = await self.inner.receive_some(max_bytes)
        await self._hang_if_frozen()
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def wait_until(cond: Callable[[], bool], seconds: float = 5) -> None:
    with trio.fail_after(seconds):
        while not cond():
            await trio.sleep(0.01)


async def meshed_pair(nursery: trio.Nursery) -> tuple[Node, Node]:
    n1, n2 = Node("one"), Node("two")
    n1.siblings, n2.siblings = [n2], [n1]
    await n1.start(nursery)
    await n2.start(nursery)
    return n1, n2


async def test_clients_on_two_meshed_relays_exchange_packets() -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            n1, n2 = await meshed_pair(nursery)
            a = await n1.connect()
            b = await n2.connect()
            await wait_until(lambda: n1.server.has_remote(b.public_key))
            await wait_until(lambda: n2.server.has_remote(a.public_key))
            await a.send_packet(b.public_key, b"across the mesh")
            got = await next_packet(b)
            assert got == f.RecvPacket(a.public_key, b"across the mesh")
            await b.send_packets([(a.public_key, bytes([i]) * 1000) for i in range(50)])
            for i in range(50):
                assert (await next_packet(a)).data == bytes([i]) * 1000
            assert n1.server.metrics.packets_forwarded == 1
            assert n2.server.metrics.packets_forwarded == 50
            assert n1.server.metrics.mesh_links == 1
            assert n1.server.metrics.mesh_peers == 1
            # Mesh peers themselves are not announced as clients.
            assert not n1.server.has_remote(n2.server.public_key)
            # b leaves: n1 forgets it and a, which had sent to it, hears PeerGone.
            await b.aclose()
            gone = await next_of(a, f.PeerGone)
            assert gone == f.PeerGone(b.public_key, f.PeerGoneReason.DISCONNECTED)
            await wait_until(lambda: not n1.server.has_remote(b.public_key))
            nursery.cancel_scope.cancel()


async def test_killed_relay_is_forgotten_and_mesh_resumes() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            n1, n2 = await meshed_pair(nursery)
            a = await n1.connect()
            b_key = generate_private_key()
            b = await n2.connect(b_key)
            await wait_until(lambda: n1.server.has_remote(b.public_key))
            await a.send_packet(b.public_key, b"one")
            assert (await next_packet(b)).data == b"one"

            n2.kill()
            gone = await next_of(a, f.PeerGone)
            assert gone == f.PeerGone(b.public_key, f.PeerGoneReason.DISCONNECTED)
            assert not n1.server.has_remote(b.public_key)
            with pytest.raises(DerpConnectionClosed):
                await next_packet(b)
            await a.send_packet(b.public_key, b"lost")
            assert await next_of(a, f.PeerGone) == f.PeerGone(
                b.public_key, f.PeerGoneReason.NOT_HERE
            )

            await n2.start(nursery)  # same key, new port; n1's link redials it
            b = await n2.connect(b_key)
            await wait_until(lambda: n1.server.has_remote(b.public_key))
            await wait_until(lambda: n2.server.has_remote(a.public_key))
            await a.send_packet(b.public_key, b"two")
            assert (await next_packet(b)).data == b"two"
            await b.send_packet(a.public_key, b"back")
            assert (await next_packet(a)).data == b"back"
            nursery.cancel_scope.cancel()


async def test_close_peer_and_forward_are_local_only() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            n1 = Node("one")
            await n1.start(nursery)
            a = await n1.connect()
            stream = await trio.open_tcp_stream("127.0.0.1", n1.port)
            peer = await DerpConn.handshake(stream, generate_private_key(), mesh_key=MESH)
            await peer.watch_conns()
            assert await next_of(peer, f.PeerPresent) == f.PeerPresent(a.public_key)
            src = bytes(32)
            await peer.forward_packet(src, a.public_key, b"forwarded")
            assert await next_packet(a) == f.RecvPacket(src, b"forwarded")
            # A forward to a key that is not local is dropped, never forwarded again.
            await peer.forward_packet(src, bytes([9]) * 32, b"nowhere")
            await wait_until(
                lambda: n1.server.metrics.drops["unknown_dest_on_forward"] == 1
            )
            await peer.close_peer(a.public_key)
            with pytest.raises(DerpConnectionClosed):
                await next_packet(a)
            assert await next_of(peer, f.PeerGone) == f.PeerGone(a.public_key)
            nursery.cancel_scope.cancel()


async def test_silently_hung_sibling_is_detected_by_ping_and_forgotten() -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            n1, n2 = Node("one"), Node("two")
            n1.siblings = [n2]
            n1.ping_interval = 0.2
            await n2.start(nursery)
            await n1.start(nursery)
            a = await n1.connect()
            b = await n2.connect()
            await wait_until(lambda: n1.server.has_remote(b.public_key))
            await a.send_packet(b.public_key, b"before")
            assert (await next_packet(b)).data == b"before"
            n2.frozen = True  # no FIN, no RST: only the missing Pong tells
            gone = await next_of(a, f.PeerGone)
            assert gone == f.PeerGone(b.public_key, f.PeerGoneReason.DISCONNECTED)
            assert not n1.server.has_remote(b.public_key)
            nursery.cancel_scope.cancel()
