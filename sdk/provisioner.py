"""Where a provisioner daemon reaches coderd, and how it authenticates.

The daemon speaks one WebSocket (``provisionerd.protocol`` describes the
messages; the job input/result are :mod:`sdk.types.jobs`).  What is plain
HTTP about it lives here: the endpoint's URL from coderd's base URL, the
pre-shared-key header, the subprotocol, and the TLS context (a CA bundle
for a server with its own certificate).
"""

from __future__ import annotations

import ssl
import urllib.parse

from sdk import http

SUBPROTOCOL = "burrow-provisioner.v1"
PSK_HEADER = "Burrow-Provisioner-PSK"
PATH = "/api/v2/provisionerd"


def websocket_url(base_url: str) -> str:
    """``http://host:port[/prefix]`` -> ``ws://host:port[/prefix]/api/v2/provisionerd``.

    Raises:
        ValueError: the URL is not http(s) or ws(s) or has no host.
    """
    parts = urllib.parse.urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(f"coderd URL must be http(s)://host[:port]: {base_url!r}")
    path = parts.path.rstrip("/") + PATH
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def tls_context(base_url: str, ca_file: str | None = None) -> ssl.SSLContext | None:
    """The client TLS context for a wss URL (``ca_file``'s CAs when given), else None.

    Raises:
        ValueError: ``ca_file`` cannot be loaded.
    """
    if urllib.parse.urlsplit(base_url).scheme not in ("https", "wss") and ca_file is None:
        return None
    return http.tls_context(ca_file)
