"""One bounded HTTP/1.1 request over trio and h11.

Every client burrow has -- the CLI's API client, the agent's, provisionerd's,
the relay latency probe -- sends one request per connection
(``Connection: close``): they talk to coderd a few times a minute, so
keep-alive would buy nothing but state.  This module is that exchange, once:

- :class:`Url` splits an ``http(s)://host[:port][/prefix]`` URL once;
- :func:`request` connects (TCP, TLS for ``https`` with an optional CA
  bundle), sends the request, and reads the answer with hard bounds: the
  response head by h11's ``max_incomplete_event_size``, the body by
  ``max_body`` (refused from ``Content-Length`` before reading, and counted
  as chunks arrive), and the whole exchange by ``timeout``;
- every way of not getting an answer is one exception, :class:`Unreachable`,
  with a message fit for a user.  An HTTP error status is *not* an error
  here: the caller decides what a 4xx means.

The response records ``head_seconds``, the time from sending the request to
the response head (the connect excluded), which is what a latency probe
measures.
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import h11
import trio

DEFAULT_MAX_BODY = 4 * 1024 * 1024
MAX_HEAD = 64 * 1024
READ_SIZE = 65536


class Unreachable(Exception):
    """No answer: the connect failed, the peer spoke no valid HTTP, the answer
    was over a bound, or nothing came back in time."""


class ResponseTooLarge(Unreachable):
    """The response body is larger than the caller's bound."""


@dataclass(frozen=True)
class Url:
    """An http(s) base URL, split once.

    Attributes:
        tls: True for ``https``.
        host: the host name or address (no brackets).
        port: the TCP port (the scheme's default when the URL has none).
        netloc: ``host[:port]`` as written, for the ``Host`` header.
        path: the path prefix without a trailing slash (``""`` for none).
    """

    tls: bool
    host: str
    port: int
    netloc: str
    path: str

    @classmethod
    def parse(cls, url: str) -> Url:
        """Split ``url``.

        Raises:
            ValueError: not an http(s) URL with a host, or a bad port.
        """
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        try:
            port = parts.port or (443 if tls else 80)
        except ValueError:
            raise ValueError(f"bad port in URL: {url!r}") from None
        return cls(tls, parts.hostname, port, parts.netloc, parts.path.rstrip("/"))

    @property
    def base(self) -> str:
        """The URL back as text, without a trailing slash."""
        return f"{'https' if self.tls else 'http'}://{self.netloc}{self.path}"

    def target(self, path: str, query: Mapping[str, str | Sequence[str]] | None = None) -> str:
        """The request target of ``path`` under this base, with ``query``
        (a list value repeats its key)."""
        out = self.path + path
        if query:
            out += "?" + urllib.parse.urlencode(query, doseq=True)
        return out

    def websocket(self, path: str) -> str:
        """The ``ws(s)://`` URL of ``path`` under this base."""
        return f"{'wss' if self.tls else 'ws'}://{self.netloc}{self.path}{path}"


@dataclass(frozen=True)
class Response:
    """A whole response.

    Attributes:
        status: the HTTP status code.
        headers: the header fields, names lower-cased, in order.
        body: the body bytes.
        head_seconds: seconds from sending the request to the response head.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    head_seconds: float

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k == wanted), None)

    def json(self) -> Any:
        """The body decoded as JSON; None for an empty or non-JSON body."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context: the system's CAs, or only ``ca_file``'s when given.

    Raises:
        ValueError: ``ca_file`` cannot be read as a PEM CA bundle (the message
            names the file).
    """
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load CA bundle {ca_file}: {exc}") from None


async def open_stream(url: Url, ssl_context: ssl.SSLContext | None = None) -> trio.abc.Stream:
    """A connected stream to ``url``'s host: TCP, wrapped in TLS for https.

    Raises:
        OSError, trio.BrokenResourceError: the connect or TLS handshake failed.
    """
    stream: trio.abc.Stream = await trio.open_tcp_stream(url.host, url.port)
    if not url.tls:
        return stream
    tls = trio.SSLStream(stream, ssl_context or tls_context(), server_hostname=url.host)
    try:
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return tls


@dataclass(frozen=True)
class Prepared:
    """A request encoded and checked, with the h11 state that will read its answer."""

    conn: h11.Connection
    data: bytes


def prepare(
    method: str,
    netloc: str,
    target: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    user_agent: str = "burrow",
) -> Prepared:
    """Encode one ``Connection: close`` request (valid HTTP/1.1 by h11).

    Raises:
        ValueError: a method, target, header name or value is not valid HTTP.
    """
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    all_headers = [("Host", netloc), ("Connection", "close"), ("User-Agent", user_agent),
                   ("Content-Length", str(len(body))), *headers]
    try:
        out = conn.send(h11.Request(method=method, target=target, headers=all_headers))
    except h11.LocalProtocolError as exc:
        raise ValueError(f"cannot send this request: {exc}") from None
    if body:
        out += conn.send(h11.Data(data=body))
    return Prepared(conn, out + conn.send(h11.EndOfMessage()))


async def exchange(stream: trio.abc.Stream, prepared: Prepared, *,
                   max_body: int = DEFAULT_MAX_BODY) -> Response:
    """Send ``prepared`` on ``stream``; read the whole response.

    Raises:
        ResponseTooLarge: the body is over ``max_body``.
        h11.RemoteProtocolError: the peer spoke no valid HTTP/1.1.
        trio.BrokenResourceError, OSError: the connection broke.
    """
    conn = prepared.conn
    start = trio.current_time()
    await stream.send_all(prepared.data)
    status, head_seconds = 0, 0.0
    got: tuple[tuple[str, str], ...] = ()
    received = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            chunk = await stream.receive_some(READ_SIZE)
            if not chunk and not status:
                raise trio.BrokenResourceError("connection closed before a response")
            conn.receive_data(bytes(chunk))
        elif isinstance(event, h11.Response):
            status, head_seconds = event.status_code, trio.current_time() - start
            got = tuple((k.decode("latin-1").lower(), v.decode("latin-1"))
                        for k, v in event.headers)
            length = next((v for k, v in got if k == "content-length"), None)
            if length is not None and length.isdigit() and int(length) > max_body:
                raise ResponseTooLarge(f"response of {length} bytes is over {max_body}")
        elif isinstance(event, h11.Data):
            received += event.data
            if len(received) > max_body:
                raise ResponseTooLarge(f"response is over {max_body} bytes")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return Response(status, got, bytes(received), head_seconds)


async def request(
    url: str | Url,
    method: str,
    target: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float = 15.0,
    max_body: int = DEFAULT_MAX_BODY,
    ssl_context: ssl.SSLContext | None = None,
    user_agent: str = "burrow",
) -> Response:
    """One request to ``target`` (a path, with query) on ``url``'s host.

    ``target`` is sent as given: callers add ``url.path`` when the base URL has
    a prefix.

    Raises:
        ValueError: ``url`` is not an http(s) URL, or a header is not valid HTTP.
        Unreachable: no connection, no valid HTTP, over ``max_body``, or no
            answer within ``timeout`` (the message says which).
    """
    base = url if isinstance(url, Url) else Url.parse(url)
    prepared = prepare(method, base.netloc, target, headers=headers, body=body,
                       user_agent=user_agent)
    try:
        with trio.fail_after(timeout):
            async with await open_stream(base, ssl_context) as stream:
                return await exchange(stream, prepared, max_body=max_body)
    except trio.TooSlowError:
        raise Unreachable(f"{base.base} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise Unreachable(f"cannot reach {base.base}: {exc.strerror or exc}") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        if isinstance(exc.__cause__, ssl.SSLError):
            raise Unreachable(f"TLS with {base.base} failed: {exc.__cause__}") from None
        raise Unreachable(f"connection to {base.base} broke: {exc or 'closed'}") from None
    except h11.ProtocolError as exc:
        raise Unreachable(f"{base.base} did not answer with valid HTTP/1.1: {exc}") from None
