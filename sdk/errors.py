"""The two ways an API call fails, the same for every client.

- :class:`ApiError`: coderd answered with an error status; it carries the
  server's ``message``, ``detail`` and ``validations`` (``{field, detail}``).
- :class:`Unreachable` (from :mod:`sdk.http`): no answer -- no connection,
  no valid HTTP, too big, too slow.  :class:`BadResponse` is its kind for an
  answer that is HTTP but not the API: not JSON, or not the expected shape.
  Callers that retry (the agent) treat both the same: try again later.

:func:`decode` turns a :class:`sdk.http.Response` into its JSON or one of these.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sdk.http import Response, Unreachable
from sdk.types.wire import Wire, WireError

W = TypeVar("W", bound=Wire)

__all__ = ["ApiError", "BadResponse", "Unreachable", "decode", "parse", "parse_list"]


class ApiError(Exception):
    """coderd answered with an error status.

    Attributes:
        status: the HTTP status code.
        message: the server's one-line message (``HTTP <status>`` without one).
        detail: more about it, or None.
        validations: ``{field, detail}`` per problem with the request body.
    """

    def __init__(
        self,
        status: int,
        message: str,
        detail: str | None = None,
        validations: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.validations = validations or []

    def __str__(self) -> str:
        text = self.message
        if self.detail:
            text += f": {self.detail}"
        if self.validations:
            text += " (" + "; ".join(f"{v.get('field')}: {v.get('detail')}" for v in
                                     self.validations) + ")"
        return text


class BadResponse(Unreachable):
    """The server answered, but not with the API's JSON (or not its shape)."""


def _validations(value: object) -> list[dict[str, str]] | None:
    if not isinstance(value, list):
        return None
    return [{str(k): str(v) for k, v in item.items()} for item in value if isinstance(item, dict)]


def decode(response: Response, base: str) -> Any:
    """The JSON of a successful answer (None for an empty body).

    Raises:
        ApiError: a 4xx/5xx answer (the server's message when it sent one).
        BadResponse: a success whose body is not JSON.
    """
    obj = response.json()
    if response.status >= 400:
        if isinstance(obj, dict) and isinstance(obj.get("message"), str):
            detail = obj.get("detail")
            raise ApiError(response.status, obj["message"],
                           detail if isinstance(detail, str) else None,
                           _validations(obj.get("validations")))
        raise ApiError(response.status, f"HTTP {response.status}")
    if response.body and obj is None:
        raise BadResponse(f"{base} answered with something that is not JSON")
    return obj


def parse(cls: type[W], obj: object, base: str) -> W:
    """``cls.from_json(obj)``; a shape mismatch is the server's fault, so BadResponse.

    Raises:
        BadResponse: ``obj`` is not a valid ``cls`` (the message names the field).
    """
    try:
        return cls.from_json(obj)
    except WireError as exc:
        raise BadResponse(f"{base} answered with an invalid {cls.__name__}: {exc}") from None


def parse_list(cls: type[W], obj: object, base: str) -> list[W]:
    """A JSON list of ``cls`` values.

    Raises:
        BadResponse: not a list, or an item is not a valid ``cls``.
    """
    if not isinstance(obj, list):
        raise BadResponse(f"{base} answered with something that is not a list")
    return [parse(cls, item, base) for item in obj]
