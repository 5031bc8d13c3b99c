"""The body of every API error answer: ``{message, detail?, validations?}``."""

from __future__ import annotations

from dataclasses import dataclass, field

from sdk.types.wire import OMIT_NONE, Wire


@dataclass(frozen=True)
class Validation(Wire):
    """One problem with a request body field."""

    field: str
    detail: str


@dataclass(frozen=True)
class ErrorBody(Wire):
    """What coderd answers with a 4xx/5xx status."""

    message: str
    detail: str | None = field(default=None, metadata=OMIT_NONE)
    validations: list[Validation] | None = field(default=None, metadata=OMIT_NONE)
