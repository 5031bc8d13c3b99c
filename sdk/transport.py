"""JSON requests to coderd's ``/api/v2`` with a token header: what every client shares.

:class:`Api` holds the base URL (split once), the token and its header, the
TLS context (the system's CAs, or a CA bundle given as ``ca_file``) and the
time bound, and sends each request through :func:`sdk.http.request`.  Errors
are the SDK's two (:mod:`sdk.errors`).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

from sdk import http
from sdk.errors import decode

API_PREFIX = "/api/v2"
Query = Mapping[str, str | Sequence[str]]


class Api:
    """One coderd's API, with one kind of token.

    Args:
        url: coderd's base URL, e.g. ``https://coder.example.com[/prefix]``.
        token_header: the header the token travels in.
        token: the token, or None (then no header is sent).
        timeout: seconds for one request (connect to last byte).
        ca_file: a PEM bundle of the CAs to trust instead of the system's.
        user_agent: the ``User-Agent`` header.
        max_body: the largest response body accepted.

    Raises:
        ValueError: ``url`` is not http(s), or ``ca_file`` cannot be loaded.
    """

    def __init__(self, url: str, *, token_header: str, token: str | None, timeout: float,
                 ca_file: str | None = None, user_agent: str = "burrow",
                 max_body: int = http.DEFAULT_MAX_BODY) -> None:
        self.base = http.Url.parse(url.rstrip("/"))
        self.url = self.base.base
        self.token_header = token_header
        self.token = token
        self.timeout = timeout
        self.ca_file = ca_file
        self.user_agent = user_agent
        self.max_body = max_body
        # Loaded once: reading the system's CAs for every request would cost more
        # than the request.
        self.ssl_context: ssl.SSLContext | None = (
            http.tls_context(ca_file) if self.base.tls or ca_file else None)

    def websocket_url(self, path: str) -> str:
        """The ``ws(s)://`` URL of API ``path``."""
        return self.base.websocket(API_PREFIX + path)

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
        query: Query | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request to API ``path``; the decoded JSON answer (None when empty).

        Raises:
            ApiError: a 4xx/5xx answer.
            Unreachable: no connection, no valid HTTP, or no answer in time;
                BadResponse (a kind of it) for a success that is not JSON.
            ValueError: ``path`` or a header is not valid HTTP.
        """
        if raw is not None:
            data = raw
        else:
            data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = [("Accept", "application/json")]
        if data:
            headers.append(("Content-Type", content_type))
        if self.token:
            headers.append((self.token_header, self.token))
        response = await http.request(
            self.base, method, self.base.target(API_PREFIX + path, query),
            headers=headers, body=data, timeout=self.timeout if timeout is None else timeout,
            max_body=self.max_body, ssl_context=self.ssl_context, user_agent=self.user_agent,
        )
        return decode(response, self.url)
