"""Request body validation that also describes itself in OpenAPI.

A body schema is a mapping of field name to :class:`Field`.  Validation
refuses non-objects, unknown fields, missing required fields and wrong types,
collecting every problem as ``{field, detail}`` for the error's
``validations`` list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdk import errors
from sdk.types.problems import ErrorBody, Validation
from sdk.types.wire import Wire, json_schema


class ApiError(errors.ApiError):
    """An HTTP error the client caused (4xx) or we report deliberately: the SDK's
    ApiError (the one clients raise), which coderd also writes as the answer."""

    def body(self) -> dict[str, Any]:
        """The answer's JSON (:class:`sdk.types.ErrorBody`)."""
        problems = [Validation(v.get("field", ""), v.get("detail", "")) for v in self.validations]
        return ErrorBody(self.message, self.detail, problems or None).to_json()


@dataclass(frozen=True)
class Field:
    """One body field.

    ``kind``: ``string``, ``integer``, ``number``, ``boolean``, ``string-map``,
    or ``array`` / ``object`` (shape checked by the route itself).
    """

    kind: str
    required: bool = False
    max_len: int = 256
    pattern: str | None = None
    enum: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    description: str = ""

    def check(self, value: Any) -> str | None:
        """A problem description, or None if ``value`` is acceptable."""
        if self.kind == "string":
            if not isinstance(value, str):
                return "must be a string"
            if len(value) > self.max_len:
                return f"must be at most {self.max_len} characters"
            if self.pattern and not re.fullmatch(self.pattern, value):
                return f"must match {self.pattern}"
            if self.enum and value not in self.enum:
                return f"must be one of {', '.join(self.enum)}"
        elif self.kind == "integer":
            if not isinstance(value, int) or isinstance(value, bool):
                return "must be an integer"
            if self.minimum is not None and value < self.minimum:
                return f"must be at least {self.minimum}"
            if self.maximum is not None and value > self.maximum:
                return f"must be at most {self.maximum}"
        elif self.kind == "number":
            if not isinstance(value, int | float) or isinstance(value, bool):
                return "must be a number"
            if value != value or value in (float("inf"), float("-inf")):
                return "must be a finite number"
            if self.minimum is not None and value < self.minimum:
                return f"must be at least {self.minimum}"
            if self.maximum is not None and value > self.maximum:
                return f"must be at most {self.maximum}"
        elif self.kind in ("array", "object"):
            want = list if self.kind == "array" else dict
            if not isinstance(value, want):
                return f"must be an {self.kind}"
        elif self.kind == "boolean":
            if not isinstance(value, bool):
                return "must be a boolean"
        elif self.kind == "string-map":
            if not isinstance(value, dict):
                return "must be an object of strings"
            if len(value) > 100:
                return "must have at most 100 entries"
            for k, v in value.items():
                if not isinstance(v, str) or len(k) > 128 or len(v) > 4096:
                    return f"entry {k[:40]!r} must be a string (keys <= 128, values <= 4096)"
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                    return f"key {k[:40]!r} must be an identifier"
        return None

    def openapi(self) -> dict[str, Any]:
        out: dict[str, Any]
        if self.kind == "string-map":
            out = {"type": "object", "additionalProperties": {"type": "string"}}
        else:
            out = {"type": self.kind}
        if self.kind == "string":
            out["maxLength"] = self.max_len
            if self.pattern:
                out["pattern"] = self.pattern
            if self.enum:
                out["enum"] = list(self.enum)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.description:
            out["description"] = self.description
        return out


Schema = Mapping[str, Field]


def parse_json_body(body: bytes, schema: Schema) -> dict[str, Any]:
    """Decode and validate a JSON object body.

    Raises:
        ApiError: 400 for malformed JSON, a non-object, unknown or missing
            fields, or wrong types (every problem listed in ``validations``).
    """
    if not body.strip():
        obj: Any = {}
    else:
        try:
            obj = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ApiError(400, "request body is not valid JSON", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise ApiError(400, "request body must be a JSON object")
    problems: list[dict[str, str]] = []
    for name in obj:
        if name not in schema:
            problems.append({"field": str(name)[:64], "detail": "unknown field"})
    for name, spec in schema.items():
        if name not in obj:
            if spec.required:
                problems.append({"field": name, "detail": "is required"})
            continue
        problem = spec.check(obj[name])
        if problem:
            problems.append({"field": name, "detail": problem})
    if problems:
        raise ApiError(400, "invalid request body", validations=problems)
    return obj


Returns = type[Wire] | list[type[Wire]]
"""What a route answers with: one :mod:`sdk.types` class, or ``[cls]`` for a list of them."""


def returns_openapi(returns: Returns, components: dict[str, Any]) -> dict[str, Any]:
    """The response schema of ``returns`` (a ``$ref``); adds the class's schema,
    derived from its fields, to ``components``."""
    cls = returns[0] if isinstance(returns, list) else returns
    components.setdefault(cls.__name__, json_schema(cls))
    ref = {"$ref": f"#/components/schemas/{cls.__name__}"}
    return {"type": "array", "items": ref} if isinstance(returns, list) else ref


def schema_openapi(schema: Schema) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {name: f.openapi() for name, f in schema.items()},
        "required": [name for name, f in schema.items() if f.required],
    }
