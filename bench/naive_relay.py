"""A naive DERP relay, as a baseline for ``python -m bench relay``.

What a first attempt in any language looks like: blocking sockets and one
thread per client.  Each thread does the DERP handshake, then loops: read one
frame (header, then payload), and if it is a SendPacket for a connected key,
``sendall`` the RecvPacket to that client's socket under its lock.  No
queues, so no drops and no fairness: a slow receiver blocks every sender to
it, and a frozen one blocks them forever.  It speaks real DERP (the same
sans-IO handshake and frame encoders as burrow's relay), so the same clients
drive both and the comparison is of the relaying alone.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from derp import frames as fr
from derp import handshake as hs
from derp.errors import DerpProtocolError
from derp.keys import public_key


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError("closed")
        got += k
    return bytes(buf)


class NaiveRelay:
    """The relay's state: the connected clients by key, each with a send lock."""

    def __init__(self, private_key: bytes) -> None:
        self._private = private_key
        self._public = public_key(private_key)
        self._clients: dict[bytes, tuple[socket.socket, threading.Lock]] = {}
        self._lock = threading.Lock()

    def serve_forever(self, listener: socket.socket) -> None:
        """Accept clients until the process ends, a thread each."""
        while True:
            sock, _ = listener.accept()
            threading.Thread(target=self._client, args=(sock,), daemon=True).start()

    def _handshake(self, sock: socket.socket) -> bytes:
        sock.sendall(fr.encode(hs.server_key_frame(self._public)))
        decoder = fr.FrameDecoder()
        head = _recv_exact(sock, fr.FRAME_HEADER_LEN)
        decoder.feed(head + _recv_exact(sock, int.from_bytes(head[1:5], "big")))
        frame = decoder.next_frame()
        if not isinstance(frame, fr.ClientInfo):
            raise ConnectionError("expected ClientInfo")
        key = hs.open_client_info(frame, self._private).key
        sock.sendall(fr.encode(hs.build_server_info(self._private, key)))
        return key

    def _client(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = b""
        try:
            key = self._handshake(sock)
            with self._lock:
                self._clients[key] = (sock, threading.Lock())
            while True:
                head = _recv_exact(sock, fr.FRAME_HEADER_LEN)
                payload = _recv_exact(sock, int.from_bytes(head[1:5], "big"))
                if head[0] != fr.FrameType.SEND_PACKET or len(payload) < fr.KEY_LEN:
                    continue
                dst = self._clients.get(payload[: fr.KEY_LEN])
                if dst is None:
                    continue
                out = fr.recv_packet_header(key, len(payload) - fr.KEY_LEN)
                with dst[1]:
                    dst[0].sendall(out + payload[fr.KEY_LEN:])
        except (OSError, ConnectionError, DerpProtocolError):
            pass
        finally:
            with self._lock:
                if self._clients.get(key, (None,))[0] is sock:
                    del self._clients[key]
            sock.close()


def serve(private_key: bytes, announce: Callable[[int], None]) -> None:
    """Listen on a loopback port, call ``announce(port)``, relay forever."""
    listener = socket.create_server(("127.0.0.1", 0))
    announce(listener.getsockname()[1])
    NaiveRelay(private_key).serve_forever(listener)
