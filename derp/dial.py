"""Dial a DERP relay by URL: TCP or TLS, then the ``/derp`` upgrade or a WebSocket.

The DERP upgrade is tried first.  WebSocket (subprotocol ``derp``) is used
instead when forced, when the upgrade is answered with a 4xx (a proxy that
blocks it), or when the server speaks only HTTP/2 -- the fallback rules of
DERP.md.  Either way the caller gets a ``trio.abc.Stream`` positioned at the
first DERP frame (ServerKey) and the name of the transport used.
"""

from __future__ import annotations

import ssl
import urllib.parse
from dataclasses import dataclass

import trio

from derp.errors import DerpError
from derp.upgrade import (
    Http2Only,
    Outcome,
    Refused,
    ResponseReader,
    Switched,
    UpgradeError,
    derp_request,
    websocket_request,
)
from derp.websocket import WebSocketStream, new_client_key
from web.prefixed import PrefixedStream

_RECEIVE = 65536


class DialError(DerpError):
    """The relay could not be reached or refused both transports."""


@dataclass(frozen=True)
class RelayURL:
    """A parsed relay URL."""

    tls: bool
    host: str
    port: int
    path: str

    @property
    def host_header(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return shown if self.port == default else f"{shown}:{self.port}"


def parse_url(url: str) -> RelayURL:
    """``http(s)://host[:port][/path]`` (also ``ws``/``wss``); path defaults to ``/derp``.

    Raises:
        DialError: an unsupported scheme or a URL without a host.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss"):
        raise DialError(f"unsupported relay URL scheme {parts.scheme!r} in {url!r}")
    if not parts.hostname:
        raise DialError(f"relay URL has no host: {url!r}")
    tls = scheme in ("https", "wss")
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError as exc:
        raise DialError(f"bad port in relay URL {url!r}") from exc
    path = parts.path if parts.path not in ("", "/") else "/derp"
    return RelayURL(tls, parts.hostname, port, path)


def _default_ssl_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def _connect(
    target: RelayURL, ssl_context: ssl.SSLContext | None
) -> tuple[trio.abc.Stream, bool]:
    """Open TCP (and TLS); returns the stream and whether ALPN chose HTTP/2."""
    tcp = await trio.open_tcp_stream(target.host, target.port)
    if not target.tls:
        return tcp, False
    tls = trio.SSLStream(
        tcp,
        ssl_context or _default_ssl_context(),
        server_hostname=target.host,
        https_compatible=True,
    )
    try:
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return tls, tls.selected_alpn_protocol() == "h2"


async def _read_outcome(stream: trio.abc.Stream, reader: ResponseReader) -> Outcome:
    while True:
        data = await stream.receive_some(_RECEIVE)
        outcome = reader.feed(bytes(data))
        if outcome is not None:
            return outcome


async def _try_derp(
    target: RelayURL, ssl_context: ssl.SSLContext | None
) -> trio.abc.Stream | Outcome:
    stream, h2 = await _connect(target, ssl_context)
    if h2:
        await trio.aclose_forcefully(stream)
        return Http2Only()
    ok = False
    try:
        await stream.send_all(derp_request(target.host_header, target.path))
        outcome = await _read_outcome(stream, ResponseReader("DERP"))
        if isinstance(outcome, Switched):
            ok = True
            if not outcome.trailing:
                return stream
            return PrefixedStream(outcome.trailing, stream)
        return outcome
    finally:
        if not ok:
            await trio.aclose_forcefully(stream)


async def _try_websocket(
    target: RelayURL, ssl_context: ssl.SSLContext | None
) -> trio.abc.Stream:
    stream, h2 = await _connect(target, ssl_context)
    ok = False
    try:
        if h2:
            raise DialError("server speaks only HTTP/2; WebSocket over HTTP/2 is not supported")
        key = new_client_key()
        await stream.send_all(websocket_request(target.host_header, key, target.path))
        reader = ResponseReader("websocket", websocket_key=key, subprotocol="derp")
        outcome = await _read_outcome(stream, reader)
        if isinstance(outcome, Switched):
            ok = True
            return WebSocketStream(stream, client=True, trailing=outcome.trailing)
        if isinstance(outcome, Refused):
            raise DialError(f"WebSocket upgrade refused with HTTP {outcome.status}")
        raise DialError("server speaks only HTTP/2; WebSocket over HTTP/2 is not supported")
    finally:
        if not ok:
            await trio.aclose_forcefully(stream)


async def dial(
    url: str,
    *,
    force_websocket: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> tuple[trio.abc.Stream, str]:
    """Connect to the relay at ``url`` and upgrade to DERP.

    Args:
        url: ``http://host:port`` or ``https://...`` (path defaults to ``/derp``).
        force_websocket: skip the DERP upgrade, use WebSocket only.
        ssl_context: for https URLs; default verifies against system CAs.
        timeout: seconds for connecting and upgrading, all attempts together.

    Returns:
        The stream positioned at the first DERP frame, and the transport name:
        ``"derp"`` or ``"websocket"``.

    Raises:
        DialError: bad URL, connection or TLS failure, timeout, or both
            transports refused.
    """
    target = parse_url(url)
    try:
        with trio.fail_after(timeout):
            if not force_websocket:
                got = await _try_derp(target, ssl_context)
                if isinstance(got, trio.abc.Stream):
                    return got, "derp"
                if isinstance(got, Refused) and not got.fallback:
                    raise DialError(f"DERP upgrade refused with HTTP {got.status}")
            return await _try_websocket(target, ssl_context), "websocket"
    except trio.TooSlowError:
        raise DialError(f"dialing {url} timed out after {timeout} s") from None
    except UpgradeError as exc:
        raise DialError(f"{url}: {exc}") from exc
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise DialError(f"cannot reach relay {url}: {exc}") from exc
