"""A userspace WAN link: a trio TCP proxy with delay, a rate cap and jitter.

This kernel has no netem, so distance is emulated here.  Every connection
accepted on the listen address is dialed through to the target; each
direction carries bytes through its own emulated link:

* **delay**: a chunk read at time ``t`` is written no earlier than ``t +
  delay`` (one way, so a ping-pong through the link takes 2 x delay);
* **rate cap**: a bottleneck serialises ``rate`` bytes per second.  A chunk
  leaves the bottleneck at ``max(now, last departure) + len / rate`` and
  arrives ``delay`` later.  The bottleneck queue is bounded (``queue_kib``,
  plus the link's small socket receive buffer): while more than that waits
  to be serialised the direction stops reading, so the sender sees TCP
  backpressure -- bytes are never dropped;
* **jitter**: up to ``jitter`` extra per chunk, uniform, but a chunk never
  arrives before the one read ahead of it, so bytes are never reordered.

State machine of one direction (``_Direction``): a reader task takes what
the socket has (up to 256 KiB), stamps it with its release time and appends
it to a FIFO; a writer task sleeps until the head's release time and writes
every chunk that is due in one ``send_all``.  EOF is queued like a chunk and
becomes ``send_eof`` on the far side (half-close passes through); the
connection closes once both directions have passed their EOF, or at once
when either side breaks.  The per-chunk Python work is a few arithmetic
operations, so one core carries far more than 200 Mbit/s.

Timers: trio's sleeps wake ~0.5-1 ms late on this machine, so each crossing
adds that much on top of the configured delay (never less than it).  Compare
against the link's own measured RTT, not the configured one.

What it does not model: the link terminates TCP on both sides, so the
endpoints' kernel TCP sees a loopback peer (no slow start or window limit at
the emulated RTT).  Windows the applications run end to end (the tunnel's
flow control, SSH channel windows, request/response turns) do see the full
delay: that is what this link exists to measure.

Library: ``port = await nursery.start(Link(target, shape).serve)``, or
``async with open_link(target, shape) as link: link.port``; assigning
``link.shape`` changes the link for chunks read from then on.  Each accepted
connection gets its own pair of directions: its own bottleneck.  From another
process: ``LinkProcess(target_port)`` runs the command line below as a child.  Command line:
``python -m bench link --listen 127.0.0.1:0 --target HOST:PORT --delay-ms 60
--rate-mbit 200`` (``--control`` reads ``set``/``stats`` lines on stdin).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import select
import socket
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import trio

READ = 256 << 10  # bytes per receive_some: big reads keep the per-byte cost low
MAX_BUFFERED = 64 << 20  # per direction, a memory bound when there is no rate cap
BATCH = 1 << 20  # at most this much due data joined into one send_all
# The link's sockets' receive buffers: bytes the kernel holds before the link
# reads them are an unshaped queue, so keep it small (loopback refills it in µs).
RCVBUF = 256 << 10


@dataclass(frozen=True)
class Shape:
    """One direction's link (both directions get the same shape).

    Attributes:
        delay_ms: one-way delay.
        rate_mbit: bottleneck rate in Mbit/s (0: no cap).
        jitter_ms: up to this much extra delay per chunk (never reorders).
        queue_kib: the bottleneck's queue; beyond it the link stops reading.
    """

    delay_ms: float = 0.0
    rate_mbit: float = 0.0
    jitter_ms: float = 0.0
    queue_kib: int = 512

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.rate_mbit < 0 or self.jitter_ms < 0:
            raise ValueError("delay, rate and jitter must be >= 0")
        if self.queue_kib < 1:
            raise ValueError("queue_kib must be >= 1")


class _Direction:
    """Bytes from ``src`` to ``dst`` through the emulated link (see the module docstring)."""

    def __init__(self, link: Link, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        self.link = link
        self.src = src
        self.dst = dst
        self.items: deque[tuple[float, bytes | None]] = deque()  # (release time, chunk|EOF)
        self.buffered = 0
        self.last_departure = 0.0  # when the bottleneck finishes what it holds
        self.last_release = 0.0
        self._wake_writer = trio.Event()
        self._wake_reader = trio.Event()
        self.carried = 0

    def _stamp(self, size: int) -> float:
        """The release time of a chunk of ``size`` bytes read now (0: EOF)."""
        shape = self.link.shape
        now = trio.current_time()
        departure = now
        if shape.rate_mbit and size:
            departure = max(now, self.last_departure) + size * 8 / (shape.rate_mbit * 1e6)
            self.last_departure = departure
        release = departure + shape.delay_ms / 1e3
        if shape.jitter_ms:
            release += random.uniform(0, shape.jitter_ms / 1e3)
        # Never before the chunk ahead: jitter and shape changes must not reorder.
        release = max(release, self.last_release)
        self.last_release = release
        return release

    async def _room(self) -> None:
        """Wait while the bottleneck queue or the link's capacity is full (backpressure).

        The capacity is what the wire holds (rate x delay) plus the queue:
        when the far side stops reading, the link stops too, as the window
        of a real connection would close.  Without a rate cap, MAX_BUFFERED.
        """
        while True:
            shape = self.link.shape
            limit = MAX_BUFFERED
            if shape.rate_mbit:
                limit = int(shape.rate_mbit * 1e6 / 8 * shape.delay_ms / 1e3) \
                    + shape.queue_kib * 1024
            if self.buffered >= min(limit, MAX_BUFFERED):
                self._wake_reader = trio.Event()
                await self._wake_reader.wait()
                continue
            if shape.rate_mbit:
                rate = shape.rate_mbit * 1e6 / 8
                excess = self.last_departure - trio.current_time() - shape.queue_kib * 1024 / rate
                if excess > 0:
                    await trio.sleep(excess)
                    continue
            return

    async def read(self) -> None:
        while True:
            await self._room()
            data = await self.src.receive_some(READ)
            self.items.append((self._stamp(len(data)), data or None))
            self.buffered += len(data)
            self._wake_writer.set()
            if not data:
                return

    async def write(self) -> None:
        items = self.items
        while True:
            if not items:
                self._wake_writer = trio.Event()
                await self._wake_writer.wait()
                continue
            await trio.sleep_until(items[0][0])
            now = trio.current_time()
            batch: list[bytes] = []
            size = 0
            while items and items[0][0] <= now and size < BATCH:
                chunk = items[0][1]
                if chunk is None:
                    break
                items.popleft()
                batch.append(chunk)
                size += len(chunk)
            if batch:
                data = batch[0] if len(batch) == 1 else b"".join(batch)
                # Counted before the send: the peer may see the bytes (and ask for
                # stats) before this task runs again after send_all's checkpoint.
                self.carried += len(data)
                await self.dst.send_all(data)
                self.buffered -= len(data)
                self._wake_reader.set()
            elif items and items[0][1] is None and items[0][0] <= now:
                items.popleft()
                await self.dst.send_eof()
                return


class Link:
    """Accepts on ``listen`` and carries every connection to ``target`` through the link.

    Attributes:
        shape: the link's shape; assign a new one to change it while running.
        port: the bound port, once ``serve`` has started.
        connections: connections accepted so far.
        forward: bytes carried listen -> target so far (closed connections included).
        back: bytes carried target -> listen so far.
    """

    def __init__(self, target: tuple[str, int], shape: Shape = Shape(),
                 listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.target = target
        self.shape = shape
        self.listen = listen
        self.port = 0
        self.connections = 0
        self._directions: list[_Direction] = []
        self._done_forward = 0
        self._done_back = 0

    @property
    def buffered(self) -> int:
        """Bytes the link holds now, both directions, every connection."""
        return sum(d.buffered for d in self._directions)

    @property
    def forward(self) -> int:
        return self._done_forward + sum(d.carried for d in self._directions[0::2])

    @property
    def back(self) -> int:
        return self._done_back + sum(d.carried for d in self._directions[1::2])

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen and carry connections until cancelled; ``started`` with the bound port.

        Raises:
            OSError: the listen address cannot be bound.
        """
        listeners = await trio.open_tcp_listeners(self.listen[1], host=self.listen[0])
        for listener in listeners:  # accepted sockets inherit it
            listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            server = await _dial(*self.target)
        except OSError:
            await trio.aclose_forcefully(client)  # the target refused: so does the link
            return
        forward, back = _Direction(self, client, server), _Direction(self, server, client)
        self._directions += [forward, back]
        try:
            async with trio.open_nursery() as nursery:
                for direction in (forward, back):
                    nursery.start_soon(_guarded, direction.read, nursery.cancel_scope)
                    nursery.start_soon(_guarded, direction.write, nursery.cancel_scope)
        finally:
            i = self._directions.index(forward)
            del self._directions[i:i + 2]
            self._done_forward += forward.carried
            self._done_back += back.carried
            await trio.aclose_forcefully(client)
            await trio.aclose_forcefully(server)


async def _dial(host: str, port: int) -> trio.SocketStream:
    """A TCP stream to the target with the link's small receive buffer.

    Raises:
        OSError: the connection failed.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _guarded(half: Callable[[], Awaitable[None]], connection: trio.CancelScope) -> None:
    """Run one half of a direction; a broken side ends the whole connection."""
    try:
        await half()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        connection.cancel()


@contextlib.asynccontextmanager
async def open_link(target: tuple[str, int], shape: Shape = Shape(),
                    listen: tuple[str, int] = ("127.0.0.1", 0)) -> AsyncIterator[Link]:
    """A running ``Link`` (``link.port`` is bound) until the block exits.

    Raises:
        OSError: the listen address cannot be bound.
    """
    link = Link(target, shape, listen)
    async with trio.open_nursery() as nursery:
        await nursery.start(link.serve)
        yield link
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- command line


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` as (host, port).

    Raises:
        ValueError: not of that form, or the port is not 0-65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def apply_settings(shape: Shape, words: list[str]) -> Shape:
    """``shape`` with ``delay-ms=N rate-mbit=N jitter-ms=N queue-kib=N`` words applied.

    Raises:
        ValueError: an unknown key or a bad value.
    """
    keys = {"delay-ms": "delay_ms", "rate-mbit": "rate_mbit", "jitter-ms": "jitter_ms",
            "queue-kib": "queue_kib"}
    changes: dict[str, float | int] = {}
    for word in words:
        key, _, value = word.partition("=")
        if key not in keys:
            raise ValueError(f"unknown setting {key!r} (known: {', '.join(keys)})")
        changes[keys[key]] = int(value) if key == "queue-kib" else float(value)
    return replace(shape, **changes)  # type: ignore[arg-type]


async def _control(link: Link) -> None:
    """Answer ``set KEY=VALUE...`` and ``stats`` lines on stdin until it closes."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buf = b""
    while data := await stdin.receive_some(4096):
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            words = line.decode(errors="replace").split()
            if words[:1] == ["set"]:
                try:
                    link.shape = apply_settings(link.shape, words[1:])
                    reply = "ok"
                except ValueError as exc:
                    reply = f"error {exc}"
            elif words[:1] == ["stats"]:
                reply = f"connections={link.connections} forward={link.forward} back={link.back}"
            else:
                reply = "error commands: set KEY=VALUE..., stats"
            sys.stdout.write(reply + "\n")
            sys.stdout.flush()


async def _serve_cli(link: Link, control: bool) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(link.serve)
        sys.stdout.write(f"listening on {link.listen[0]}:{port}\n")
        sys.stdout.flush()
        if control:
            await _control(link)
            nursery.cancel_scope.cancel()


class LinkProcess:
    """A ``python -m bench link --control`` child process in front of ``127.0.0.1:target``.

    Attributes:
        port: the link's listening port.
    """

    def __init__(self, target: int) -> None:
        """Start it and read its port.

        Raises:
            RuntimeError: it did not report its port within 30 s.
        """
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench", "link", "--target", f"127.0.0.1:{target}",
             "--control"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.port = int(self._line().rsplit(":", 1)[1])
        except BaseException:
            self.close()
            raise

    def _line(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().strip() if ready else ""
        if not line:
            raise RuntimeError("a bench link process did not answer")
        return line

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._line()

    def set(self, **settings: float) -> None:
        """Reshape the link: ``set(delay_ms=30, rate_mbit=200)``.

        Raises:
            RuntimeError: the link refused a setting or did not answer.
        """
        words = " ".join(f"{k.replace('_', '-')}={v}" for k, v in settings.items())
        reply = self._ask(f"set {words}")
        if reply != "ok":
            raise RuntimeError(f"bench link: {reply}")

    def carried(self) -> int:
        """Bytes carried both ways so far.

        Raises:
            RuntimeError: the link did not answer.
        """
        fields = dict(w.split("=") for w in self._ask("stats").split())
        return int(fields["forward"]) + int(fields["back"])

    def close(self) -> None:
        """Stop it (EOF on its stdin, then by PID if need be)."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench link",
        description="a userspace WAN link: TCP proxy with one-way delay, rate cap and jitter")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default 127.0.0.1:0)")
    parser.add_argument("--target", required=True, help="HOST:PORT to carry connections to")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay (RTT = 2x)")
    parser.add_argument("--rate-mbit", type=float, default=0.0,
                        help="bottleneck rate per direction, Mbit/s (0: none)")
    parser.add_argument("--jitter-ms", type=float, default=0.0,
                        help="up to this much extra delay per chunk, never reordering")
    parser.add_argument("--queue-kib", type=int, default=512,
                        help="bottleneck queue before the link stops reading (default 512)")
    parser.add_argument("--control", action="store_true",
                        help="read 'set delay-ms=N ...' and 'stats' lines on stdin; exit at EOF")
    args = parser.parse_args(argv)
    try:
        listen = parse_hostport(args.listen)
    except ValueError as exc:
        parser.error(f"--listen: {exc}")
    try:
        target = parse_hostport(args.target)
    except ValueError as exc:
        parser.error(f"--target: {exc}")
    try:
        shape = Shape(args.delay_ms, args.rate_mbit, args.jitter_ms, args.queue_kib)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        trio.run(_serve_cli, Link(target, shape, listen), args.control)
    except OSError as exc:
        sys.stderr.write(f"bench link: cannot listen on {args.listen}: {exc.strerror or exc}\n")
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
