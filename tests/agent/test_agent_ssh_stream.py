"""The SSH server over in-memory streams, no sockets at all.

Both ends run asyncssh on the module's trio-stream transport: the server via
``SSHServer.serve_stream``, the client via the same bridge.  One pair trickles
one byte per receive (every SSH packet arrives split at every offset); the
other carries a few MiB with half-close at the end.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import trio
import trio.testing
import trio_asyncio

from agent.ssh_adapter import SSHServer, _StreamTransport, _Tunnel, asyncio_loop
from agent.stats import ConnStats


def one_way(max_bytes: int | None) -> tuple[trio.abc.SendStream, trio.abc.ReceiveStream]:
    send = trio.testing.MemorySendStream()
    recv = trio.testing.MemoryReceiveStream()

    async def pump() -> None:
        trio.testing.memory_stream_pump(send, recv, max_bytes=max_bytes)

    send.send_all_hook = pump
    recv.receive_some_hook = pump
    return send, recv


Pair = tuple[trio.StapledStream[Any, Any], trio.StapledStream[Any, Any]]


def stream_pair(max_bytes: int | None) -> Pair:
    a_send, b_recv = one_way(max_bytes)
    b_send, a_recv = one_way(max_bytes)
    return trio.StapledStream(a_send, a_recv), trio.StapledStream(b_send, b_recv)


async def run_client(
    stream: trio.abc.Stream, nursery: trio.Nursery, command: str, stdin: bytes
) -> asyncssh.SSHCompletedProcess:
    transport = _StreamTransport(stream, ("agent", 22), ConnStats())
    nursery.start_soon(transport._pump_in)
    nursery.start_soon(transport._pump_out)

    async def run() -> asyncssh.SSHCompletedProcess:
        async with asyncssh.connect(
            "agent", 22, tunnel=_Tunnel(transport), username="dev", known_hosts=None,
            client_keys=None, agent_path=None,
        ) as conn:
            return await conn.run(command, input=stdin, encoding=None)

    result: asyncssh.SSHCompletedProcess = await trio_asyncio.aio_as_trio(run)()
    return result


async def test_ssh_over_a_one_byte_trickle(tmp_path: Path) -> None:
    server = SSHServer(tmp_path / "key", shell="/bin/sh", workdir=tmp_path)
    client_side, agent_side = stream_pair(max_bytes=1)
    with trio.fail_after(60):
        async with asyncio_loop(), trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_stream, agent_side)
            result = await run_client(client_side, nursery, "cat; echo done; exit 3", b"abc\n")
            nursery.cancel_scope.cancel()
    assert result.exit_status == 3
    assert result.stdout == b"abc\ndone\n"
    assert server.stats.snapshot().sessions_total == 1


async def test_ssh_bulk_over_memory_streams(tmp_path: Path) -> None:
    server = SSHServer(tmp_path / "key", shell="/bin/sh", workdir=tmp_path)
    client_side, agent_side = stream_pair(max_bytes=None)
    data = os.urandom(3 * 1024 * 1024)
    with trio.fail_after(60):
        async with asyncio_loop(), trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_stream, agent_side)
            result = await run_client(client_side, nursery, "cat", data)
            nursery.cancel_scope.cancel()
    assert result.exit_status == 0
    assert isinstance(result.stdout, bytes)
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


async def test_internal_failure_ends_one_connection_counted_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = SSHServer(tmp_path / "key", shell="/bin/sh", workdir=tmp_path)

    async def broken(transport: object) -> None:
        raise RuntimeError("simulated asyncssh bug")

    monkeypatch.setattr(server, "_accept", broken)
    client_side, agent_side = stream_pair(max_bytes=None)
    with trio.fail_after(10):
        await server.serve_stream(agent_side)  # returns, does not raise
        assert await client_side.receive_some(10) == b""  # the stream was closed
    snap = server.stats.snapshot()
    assert (snap.errors, snap.sessions_open) == (1, 0)
