"""The agent's HTTP to coderd, now :mod:`sdk.agent` and :mod:`sdk.relay`.

Compatibility names for the agent code written against them (remove once
``agent.run`` and ``agent.reports`` use ``sdk.agent.AgentClient`` and the SDK's
errors directly):

- :class:`CoderdClient`: :class:`sdk.agent.AgentClient` whose error answers
  are :class:`CoderdRefused`;
- :class:`CoderdRefused`: an :class:`sdk.errors.ApiError` printed as
  ``HTTP <status>: <message>`` (what the agent's log lines and errors say);
- :data:`CoderdUnreachable`: :class:`sdk.errors.Unreachable` itself;
- :func:`probe_latency`: :func:`sdk.relay.probe_latency`.
"""

from __future__ import annotations

from typing import Any

from sdk.agent import AGENT_HEADER, MAX_RESPONSE, AgentClient
from sdk.errors import ApiError, Unreachable
from sdk.relay import LATENCY_PATH, probe_latency

__all__ = ["AGENT_HEADER", "LATENCY_PATH", "MAX_RESPONSE", "CoderdClient", "CoderdRefused",
           "CoderdUnreachable", "probe_latency"]

CoderdUnreachable = Unreachable


class CoderdRefused(ApiError):
    """coderd answered with an HTTP error (``status``), shown as ``HTTP <status>: <message>``."""

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message[:300]}"


class CoderdClient(AgentClient):
    """:class:`sdk.agent.AgentClient`, raising :class:`CoderdRefused` for error answers."""

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request; the decoded answer (None when empty).

        Raises:
            CoderdUnreachable: no connection or no answer within the timeout.
            CoderdRefused: a 4xx/5xx answer.
        """
        try:
            return await super().request(method, path, body)
        except CoderdRefused:
            raise
        except ApiError as exc:
            # The agent said "error" where the server sent no message.
            message = "error" if exc.message == f"HTTP {exc.status}" else exc.message
            raise CoderdRefused(exc.status, message, exc.detail, exc.validations) from None
