"""The agent API client: what a workspace agent calls on coderd.

Requests carry the agent token in ``Burrow-Agent-Token`` and go to
``/api/v2/workspaceagents/me/...``.  The agent retries what fails, so the
errors are the SDK's two kinds, and callers tell them apart by kind only:
:class:`sdk.errors.Unreachable` (try again later) and
:class:`sdk.errors.ApiError` (``status`` >= 500: try again; else refused).
The coordinator WebSocket is opened by the agent itself, from
:meth:`AgentClient.websocket_url` and :attr:`AgentClient.auth_header`.
"""

from __future__ import annotations

from typing import Any

from sdk import types as t
from sdk.errors import parse
from sdk.transport import Api

AGENT_HEADER = "Burrow-Agent-Token"
MAX_RESPONSE = 4 * 1024 * 1024
ME = "/workspaceagents/me"


class AgentClient:
    """coderd's agent API with the agent token.

    Args:
        url: coderd's access URL.
        token: the agent token.
        timeout: seconds for one request.
        ca_file: a PEM bundle of the CAs to trust instead of the system's.

    Raises:
        ValueError: ``url`` is not http(s), or ``ca_file`` cannot be loaded.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 15.0,
                 ca_file: str | None = None) -> None:
        self.api = Api(url, token_header=AGENT_HEADER, token=token, timeout=timeout,
                       ca_file=ca_file, user_agent="burrow-agent", max_body=MAX_RESPONSE)
        self.url = self.api.url
        self._token = token

    @property
    def timeout(self) -> float:
        return self.api.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self.api.timeout = value

    def websocket_url(self, path: str) -> str:
        """The ``ws(s)://`` URL of API ``path``."""
        return self.api.websocket_url(path)

    @property
    def auth_header(self) -> tuple[bytes, bytes]:
        """The token header, for the WebSocket upgrade request."""
        return AGENT_HEADER.encode(), self._token.encode()

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request; the decoded answer (None when empty).

        Raises:
            Unreachable: no connection or no answer within the timeout.
            ApiError: a 4xx/5xx answer.
        """
        return await self.api.call(method, path, body=body)

    # -- typed calls, as the agent makes them --------------------------------

    async def manifest(self) -> t.Manifest:
        """What this agent starts from.

        Raises:
            BadResponse: the answer is not a manifest (an Unreachable: retry).
        """
        return parse(t.Manifest, await self.request("GET", f"{ME}/manifest"), self.url)

    async def relay_map(self) -> t.RelayMap:
        return parse(t.RelayMap, await self.request("GET", f"{ME}/relaymap"), self.url)

    async def post_lifecycle(self, report: t.Lifecycle) -> None:
        await self.request("POST", f"{ME}/lifecycle", report.to_json())

    async def post_ports(self, report: t.Ports) -> None:
        await self.request("POST", f"{ME}/ports", report.to_json())

    async def post_stats(self, report: t.Stats) -> None:
        await self.request("POST", f"{ME}/stats", report.to_json())

    async def post_logs(self, batch: t.ScriptLogs) -> t.LogsStored:
        """Append script output; how much coderd stored (it caps lines per agent)."""
        out = await self.request("POST", f"{ME}/logs", batch.to_json())
        return parse(t.LogsStored, out, self.url)
