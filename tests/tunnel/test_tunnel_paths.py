"""Path changes under live transfers, with real sockets on 127.0.0.1:

* a direct TCP path appears mid-transfer -> traffic moves to it; it dies ->
  back to the relay; the bytes arrive intact;
* through a real ``burrow relay`` process: kill it mid-transfer and restart it
  on the same port; the transfer completes and the sha256 matches.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from derp.client import DerpClient
from tests.netutil import free_port
from tunnel.derp_path import DerpPath
from tunnel.endpoint import Endpoint
from tunnel.handshake import generate_private_key
from tunnel.mempath import MemoryNetwork
from tunnel.stream import TunnelStream

CHUNK = 65536


class Proxy:
    """A TCP forwarder we can kill, counting the bytes it carried."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.bytes = 0
        self.scope = trio.CancelScope()
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()
            await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream(*self.target)

        async def copy(src: trio.SocketStream, dst: trio.SocketStream) -> None:
            try:
                while data := await src.receive_some(CHUNK):
                    self.bytes += len(data)
                    await dst.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                await trio.aclose_forcefully(dst)

        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(copy, client, server)
            nursery.start_soon(copy, server, client)

    def kill(self) -> None:
        self.scope.cancel()


Handler = Callable[[bytes, str, TunnelStream], Awaitable[None]]


async def sink_into(results: dict[str, str]) -> Handler:
    async def handler(peer: bytes, service: str, stream: TunnelStream) -> None:
        h = hashlib.sha256()
        while data := await stream.receive_some():
            h.update(data)
        results[service] = h.hexdigest()
        await stream.send_eof()
        await stream.aclose()

    return handler


async def send_blob(
    stream: TunnelStream, blob: bytes, at: dict[int, Callable[[], Awaitable[None]]]
) -> None:
    view = memoryview(blob)
    for off in range(0, len(blob), CHUNK):
        step = off // CHUNK
        if step in at:
            await at[step]()
        await stream.send_all(view[off : off + CHUNK])
    await stream.send_eof()
    assert await stream.receive_some() == b""
    await stream.aclose()


async def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        for _ in range(100_000):
            if cond():
                return
            await trio.sleep(0.005)
    raise AssertionError(what)


async def test_direct_path_appears_then_dies_mid_transfer() -> None:
    net = MemoryNetwork()
    a = Endpoint(generate_private_key())
    b = Endpoint(generate_private_key())
    a.add_relay(net.attach(a.public_key))
    b.add_relay(net.attach(b.public_key))
    a.set_peer(b.public_key)
    b.set_peer(a.public_key)
    blob = random.Random(2).randbytes(24 << 20)
    results: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        host, port = await b.listen_direct()
        proxy = Proxy((host, port))
        await nursery.start(proxy.run)
        nursery.start_soon(b.serve, await sink_into(results))

        async def go_direct() -> None:
            assert a.path_of(b.public_key) == "relay"
            relayed = net.counts["sent"]
            a.set_peer(b.public_key, direct_endpoints=[("127.0.0.1", proxy.port)])
            await wait_for(lambda: a.path_of(b.public_key) == "direct", "a never went direct")
            await wait_for(lambda: b.path_of(a.public_key) == "direct", "b never went direct")
            assert relayed > 0

        async def kill_direct() -> None:
            assert proxy.bytes > 4 << 20, "the direct path carried the transfer"
            proxy.kill()
            await wait_for(lambda: a.path_of(b.public_key) == "relay", "a stayed direct")
            await wait_for(lambda: b.path_of(a.public_key) == "relay", "b stayed direct")

        with trio.fail_after(60):
            stream = await a.open_stream(b.public_key, "blob")
            n = len(blob) // CHUNK
            await send_blob(stream, blob, {n // 4: go_direct, (3 * n) // 4: kill_direct})
        assert results["blob"] == hashlib.sha256(blob).hexdigest()
        session = a.session(b.public_key)
        assert session is not None
        assert session.path_changes >= 2
        nursery.cancel_scope.cancel()


class Relay:
    """A ``burrow relay`` subprocess on a fixed port, killed by PID."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "burrow.cli", "relay", "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=dict(os.environ),
        )
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        t.start()
        t.join(timeout)
        if not box or not box[0].startswith("relay listening on"):
            self.kill()
            raise RuntimeError(f"relay did not start: {box!r}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@asynccontextmanager
async def relay_process(port: int) -> AsyncIterator[Relay]:
    relay = Relay(port)
    try:
        await trio.to_thread.run_sync(relay.start)
        yield relay
    finally:
        relay.kill()


async def test_relay_killed_and_restarted_mid_transfer() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ka, kb = generate_private_key(), generate_private_key()
    blob = random.Random(3).randbytes(16 << 20)
    results: dict[str, str] = {}
    async with relay_process(port) as relay, trio.open_nursery() as nursery:
        ca = DerpClient(url, ka, min_backoff=0.05, max_backoff=0.5)
        cb = DerpClient(url, kb, min_backoff=0.05, max_backoff=0.5)
        with trio.fail_after(20):
            await nursery.start(ca.run)
            await nursery.start(cb.run)
        a = Endpoint(ka, relay=DerpPath(ca))
        b = Endpoint(kb, relay=DerpPath(cb))
        a.set_peer(b.public_key)
        b.set_peer(a.public_key)
        await nursery.start(a.run)
        await nursery.start(b.run)
        nursery.start_soon(b.serve, await sink_into(results))

        async def restart() -> None:
            relay.kill()
            await trio.sleep(0.2)
            await trio.to_thread.run_sync(relay.start)

        with trio.fail_after(90):
            stream = await a.open_stream(b.public_key, "blob")
            n = len(blob) // CHUNK
            await send_blob(stream, blob, {n // 3: restart})
        assert results["blob"] == hashlib.sha256(blob).hexdigest()
        assert ca.connects >= 2
        assert cb.connects >= 2
        nursery.cancel_scope.cancel()


async def test_through_relay_over_websocket_and_upgrade() -> None:
    """One side behind a proxy that forces the WebSocket fallback, one on the
    DERP upgrade: the tunnel does not care."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ka, kb = generate_private_key(), generate_private_key()
    blob = random.Random(4).randbytes(2 << 20)
    results: dict[str, str] = {}
    async with relay_process(port), trio.open_nursery() as nursery:
        ca = DerpClient(url, ka, force_websocket=True)
        cb = DerpClient(url, kb)
        with trio.fail_after(20):
            await nursery.start(ca.run)
            await nursery.start(cb.run)
        assert ca.transport == "websocket"
        a = Endpoint(ka, relay=DerpPath(ca))
        b = Endpoint(kb, relay=DerpPath(cb))
        a.set_peer(b.public_key)
        b.set_peer(a.public_key)
        await nursery.start(a.run)
        await nursery.start(b.run)
        nursery.start_soon(b.serve, await sink_into(results))
        with trio.fail_after(60):
            stream = await a.open_stream(b.public_key, "blob")
            await send_blob(stream, blob, {})
            assert await a.ping(b.public_key) > 0
        assert results["blob"] == hashlib.sha256(blob).hexdigest()
        nursery.cancel_scope.cancel()
