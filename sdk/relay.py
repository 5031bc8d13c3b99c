"""Talking to relays over plain HTTP: the latency probe, and (next) registration.

:func:`probe_latency` times ``GET <region url>/derp/latency-check`` from the
request to the response head (the connect is not counted): the round trip an
idle relay adds.  Agents and the CLI pick their home region by it.

A regional relay registering itself with coderd (with a relay token) will be
a client here, beside the probe: ``RelayClient`` over :class:`sdk.transport.Api`.
"""

from __future__ import annotations

import ssl

from sdk import http

LATENCY_PATH = "/derp/latency-check"


async def probe_latency(url: str, *, timeout: float = 5.0,
                        ssl_context: ssl.SSLContext | None = None) -> float:
    """Seconds from request to response head of ``GET <url>/derp/latency-check``.

    Raises:
        Unreachable: no connection, no valid HTTP, or no answer within ``timeout``.
        ValueError: not an http(s) URL, or the answer is not 200.
    """
    base = http.Url.parse(url)
    response = await http.request(base, "GET", base.target(LATENCY_PATH), timeout=timeout,
                                  max_body=64 * 1024, ssl_context=ssl_context,
                                  user_agent="burrow-probe")
    if response.status != 200:
        raise ValueError(f"HTTP {response.status}")
    return response.head_seconds
