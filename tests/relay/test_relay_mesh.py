"""Two meshed ``burrow relay`` processes: clients on different relays exchange
packets; killing one relay makes the other report its clients gone; restarting
it resumes the mesh.

Each relay dials its sibling; a port is only known once a relay is up, so
relay A first starts alone, B starts meshed with A, then A restarts on the
same port meshed with B -- which also exercises B's redial.
"""

from __future__ import annotations

import signal
import ssl
import sys
from pathlib import Path

import trio

from derp.client import DerpClient, Packet, PeerGone
from derp.keys import generate_private_key

sys.path.insert(0, str(Path(__file__).parent))
from relay_procs import RelayProcess, make_cert


async def exchange(src: DerpClient, dst: DerpClient, tag: bytes, *, within: float = 15) -> None:
    """Send ``tag`` from src to dst until it arrives (the mesh may still be forming)."""
    with trio.fail_after(within):
        while True:
            await src.send(dst.public_key, tag)
            with trio.move_on_after(0.2):
                while True:
                    event = await dst.receive()
                    if isinstance(event, Packet) and event.data == tag:
                        assert event.src == src.public_key
                        return


async def test_two_meshed_relay_processes(tmp_path: Path) -> None:
    key_file = tmp_path / "mesh.key"
    key_file.write_text("ab" * 32 + "\n")
    mesh = ["--mesh-key-file", str(key_file), "--log-level", "debug"]
    procs: list[RelayProcess] = []
    try:
        first = RelayProcess("--listen", "127.0.0.1:0", *mesh)
        procs.append(first)
        b = RelayProcess("--listen", "127.0.0.1:0", *mesh, "--mesh-with", first.url)
        procs.append(b)
        assert first.stop() == 0
        a = RelayProcess("--listen", first.listen, *mesh, "--mesh-with", b.url)
        procs.append(a)

        ca = DerpClient(a.url, generate_private_key(), max_backoff=0.3)
        cb = DerpClient(b.url, generate_private_key(), max_backoff=0.3)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(10):
                await nursery.start(ca.run)
                await nursery.start(cb.run)
            await exchange(ca, cb, b"a->b")
            await exchange(cb, ca, b"b->a")

            # Kill A hard: B must forget ca and tell cb (which sent to it).
            a.stop(signal.SIGKILL)
            with trio.fail_after(15):
                while True:
                    event = await cb.receive()
                    if isinstance(event, PeerGone) and event.key == ca.public_key:
                        break

            # Restart A on the same port: ca reconnects, the mesh resumes.
            a2 = RelayProcess("--listen", a.listen, *mesh, "--mesh-with", b.url)
            procs.append(a2)
            await exchange(cb, ca, b"b->a again", within=20)
            await exchange(ca, cb, b"a->b again", within=20)
            assert ca.connects >= 2
            nursery.cancel_scope.cancel()
        for p in procs:
            if p.proc.poll() is None:
                assert p.stop() == 0
            assert "Traceback" not in "".join(p.stderr_lines)
    finally:
        for p in procs:
            p.kill()


async def test_tls_mesh_with_private_ca(tmp_path: Path) -> None:
    """B meshes with A over https, verifying A with --mesh-ca-file; B's client
    reaches A's client through the link."""
    cert, key = make_cert(tmp_path)
    key_file = tmp_path / "mesh.key"
    key_file.write_text("cd" * 32)
    tls = ["--tls-cert", cert, "--tls-key", key, "--mesh-key-file", str(key_file)]
    procs: list[RelayProcess] = []
    try:
        a = RelayProcess("--listen", "127.0.0.1:0", *tls)
        procs.append(a)
        assert a.url.startswith("https://")
        b = RelayProcess("--listen", "127.0.0.1:0", *tls, "--mesh-with", a.url,
                         "--mesh-ca-file", cert)
        procs.append(b)
        ctx = ssl.create_default_context(cafile=cert)
        ca = DerpClient(a.url, generate_private_key(), ssl_context=ctx)
        cb = DerpClient(b.url, generate_private_key(), ssl_context=ctx)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(10):
                await nursery.start(ca.run)
                await nursery.start(cb.run)
            await exchange(cb, ca, b"b->a over tls mesh")
            nursery.cancel_scope.cancel()
        for p in procs:
            assert p.stop() == 0
            assert "Traceback" not in "".join(p.stderr_lines)
    finally:
        for p in procs:
            p.kill()
