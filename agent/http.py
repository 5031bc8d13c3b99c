"""The agent's HTTP to coderd: JSON requests with its token, and relay latency probes.

One request per connection (``Connection: close``) with h11: the agent talks
to coderd a few times a minute, so keep-alive would buy nothing but state.
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
from typing import Any

import h11
import trio

AGENT_HEADER = "Burrow-Agent-Token"
MAX_RESPONSE = 4 * 1024 * 1024
LATENCY_PATH = "/derp/latency-check"


class CoderdUnreachable(Exception):
    """No connection to coderd, or it did not answer in time (retry later)."""


class CoderdRefused(Exception):
    """coderd answered with an HTTP error.

    Attributes:
        status: the HTTP status code.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _split(url: str) -> tuple[bool, str, int, str, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    return tls, parts.hostname, parts.port or (443 if tls else 80), parts.netloc, parts.path


async def _open(tls: bool, host: str, port: int) -> trio.abc.Stream:
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if tls:
        ssl_stream = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=host)
        await ssl_stream.do_handshake()
        return ssl_stream
    return stream


async def _exchange(stream: trio.abc.Stream, request: bytes) -> tuple[int, bytes, float]:
    """Send ``request``; returns (status, body, seconds until the response head)."""
    conn = h11.Connection(h11.CLIENT)
    start = trio.current_time()
    await stream.send_all(request)
    status, first, body = 0, 0.0, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            status, first = event.status_code, trio.current_time() - start
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_RESPONSE:
                raise CoderdUnreachable("response too large")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, bytes(body), first


def _request_bytes(method: str, target: str, netloc: str,
                   headers: list[tuple[str, str]], data: bytes) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    all_headers = [("Host", netloc), ("Connection", "close"), ("User-Agent", "burrow-agent"),
                   ("Content-Length", str(len(data))), *headers]
    out = conn.send(h11.Request(method=method, target=target, headers=all_headers))
    if data:
        out += conn.send(h11.Data(data=data))
    return out + conn.send(h11.EndOfMessage())


class CoderdClient:
    """coderd's agent API (``/api/v2/workspaceagents/me/...``) with the agent token.

    Args:
        url: coderd's access URL.
        token: the agent token.
        timeout: seconds for one request.

    Raises:
        ValueError: ``url`` is not http(s).
    """

    def __init__(self, url: str, token: str, *, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self._tls, self._host, self._port, self._netloc, path = _split(self.url)
        self._prefix = path.rstrip("/") + "/api/v2"
        self._token = token
        self.timeout = timeout

    def websocket_url(self, path: str) -> str:
        scheme = "wss" if self._tls else "ws"
        return f"{scheme}://{self._netloc}{self._prefix}{path}"

    @property
    def auth_header(self) -> tuple[bytes, bytes]:
        return AGENT_HEADER.encode(), self._token.encode()

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request; the decoded answer (None when empty).

        Raises:
            CoderdUnreachable: no connection or no answer within the timeout.
            CoderdRefused: a 4xx/5xx answer.
        """
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = [(AGENT_HEADER, self._token), ("Accept", "application/json")]
        if data:
            headers.append(("Content-Type", "application/json"))
        request = _request_bytes(method, self._prefix + path, self._netloc, headers, data)
        try:
            with trio.fail_after(self.timeout):
                async with await _open(self._tls, self._host, self._port) as stream:
                    status, payload, _ = await _exchange(stream, request)
        except trio.TooSlowError:
            raise CoderdUnreachable(f"{self.url} did not answer in time") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                h11.ProtocolError) as exc:
            raise CoderdUnreachable(f"cannot reach {self.url}: {exc}") from None
        try:
            obj = json.loads(payload) if payload else None
        except ValueError:
            obj = None
        if status >= 400:
            msg = obj.get("message") if isinstance(obj, dict) else None
            raise CoderdRefused(status, str(msg or "error")[:300])
        return obj


async def probe_latency(url: str, *, timeout: float = 5.0) -> float:
    """Seconds from request to response head of ``GET <url>/derp/latency-check``
    (the connect is not counted).

    Raises:
        OSError, trio.BrokenResourceError, h11.ProtocolError: unreachable.
        trio.TooSlowError: no answer within ``timeout``.
        ValueError: not an http(s) URL, or the answer is not 200.
    """
    tls, host, port, netloc, path = _split(url)
    request = _request_bytes("GET", path.rstrip("/") + LATENCY_PATH, netloc, [], b"")
    with trio.fail_after(timeout):
        async with await _open(tls, host, port) as stream:
            status, _, elapsed = await _exchange(stream, request)
    if status != 200:
        raise ValueError(f"HTTP {status}")
    return elapsed
