"""JSON for frozen dataclasses: one strict encoder/decoder driven by the field types.

Every API value (``sdk.types``) is a frozen dataclass deriving from
:class:`Wire`.  Its fields' annotations are the whole contract: ``to_json``
writes them, ``from_json`` checks them, and :func:`json_schema` describes
them, so the server's responses, the clients' parsing and the OpenAPI
document cannot drift apart.

Field types are kept simple on purpose (each has one JSON Schema):
``str``, ``int``, ``float`` (a JSON int is accepted), ``bool``, ``bytes``
(base64 text), ``Any`` (any JSON), ``Literal["a", "b"]`` (string enums),
``X | None``, ``list[X]``, ``dict[str, X]`` and nested :class:`Wire` classes.

Decoding is strict about types: a wrong type raises :class:`WireError`
naming the field (``latest_build.status``, ``logs[2].id``).  A field that is
missing takes its default, else ``None`` when it may be null, else is an
error.  Unknown keys are ignored by default, so a client keeps working
against a newer server that added a field; a class that is an exact
contract between two of our processes (the provisioner job input) sets
``UNKNOWN_KEYS = "refuse"``.

A field with ``metadata={"omit_none": True}`` (``metadata=OMIT_NONE``) is left
out of the JSON while it is None: some responses carry a key only sometimes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import types
import typing
from typing import Any, ClassVar, Literal, TypeVar

W = TypeVar("W", bound="Wire")


class WireError(ValueError):
    """A JSON value does not fit its type.

    Attributes:
        field: the dotted path of the offending field ("" for the whole value).
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


OMIT_NONE: typing.Mapping[str, bool] = types.MappingProxyType({"omit_none": True})
"""Field metadata: leave the field out of the JSON while it is None, e.g.
``redirect: str | None = field(default=None, metadata=OMIT_NONE)``."""


class Wire:
    """Base of the JSON API values (a mixin for frozen dataclasses)."""

    UNKNOWN_KEYS: ClassVar[Literal["ignore", "refuse"]] = "ignore"
    WHAT: ClassVar[str] = ""
    """How errors name the whole value (default: the class name)."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object (plain dicts, lists and scalars)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = _encode(value)
        return out

    @classmethod
    def from_json(cls: type[W], obj: object) -> W:
        """Check and convert a decoded JSON object.

        Raises:
            WireError: not an object, a missing required field, a wrong type,
                or (for ``UNKNOWN_KEYS = "refuse"``) an unknown key.
        """
        return _decode_wire(cls, obj, "")


def _encode(value: Any) -> Any:
    if isinstance(value, Wire):
        return value.to_json()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:  # resolved once per class: the annotations are strings
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def fields_of(cls: type[Wire]) -> list[tuple[dataclasses.Field[Any], Any]]:
    """Each dataclass field of ``cls`` with its resolved type."""
    hints = _hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return (f.default is not dataclasses.MISSING
            or f.default_factory is not dataclasses.MISSING)


def _nullable(tp: Any) -> bool:
    return _is_union(tp) and type(None) in typing.get_args(tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _decode_wire(cls: type[W], obj: object, path: str) -> W:
    what = path or cls.WHAT or cls.__name__
    if not isinstance(obj, dict):
        raise WireError(path, "must be a JSON object") if path else WireError(
            "", f"{what} must be a JSON object")
    known = _hints(cls)
    if cls.UNKNOWN_KEYS == "refuse":
        unknown = sorted(str(k) for k in obj if k not in known)
        if unknown:
            raise WireError(path, f"unknown field(s) {unknown}") if path else WireError(
                "", f"{what}: unknown field(s) {unknown}")
    kwargs: dict[str, Any] = {}
    for f, tp in fields_of(cls):
        sub = f"{path}.{f.name}" if path else f.name
        if f.name not in obj:
            if _has_default(f):
                continue
            if _nullable(tp):
                kwargs[f.name] = None
                continue
            raise WireError(sub, "is required")
        kwargs[f.name] = _decode(tp, obj[f.name], sub)
    return cls(**kwargs)


def _decode(tp: Any, value: Any, path: str) -> Any:
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, Wire):
        return _decode_wire(tp, value, path)
    origin = typing.get_origin(tp)
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise WireError(path, "must not be null")
        others = [a for a in args if a is not type(None)]
        if len(others) != 1:
            raise TypeError(f"unsupported union {tp!r} at {path}")
        return _decode(others[0], value, path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or not isinstance(value, str):
            raise WireError(path, f"must be one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise WireError(path, "must be a list")
        (item,) = typing.get_args(tp)
        return [_decode(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise WireError(path, "must be an object")
        _, item = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise WireError(path, "keys must be strings")
            out[k] = _decode(item, v, f"{path}.{k}")
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise WireError(path, "must be a boolean")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise WireError(path, "must be an integer")
        return value
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise WireError(path, "must be a number")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise WireError(path, "must be a string")
        return value
    if tp is bytes:
        if not isinstance(value, str):
            raise WireError(path, "must be a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise WireError(path, "is not valid base64") from None
    raise TypeError(f"unsupported field type {tp!r} at {path}")


# -- JSON Schema --------------------------------------------------------------


def json_schema(cls: type[Wire]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12 / OpenAPI 3.1) of ``cls``'s JSON object.

    Nested classes are written inline; ``required`` lists the fields that are
    always present in what ``to_json`` writes.
    """
    props: dict[str, Any] = {}
    required: list[str] = []
    for f, tp in fields_of(cls):
        props[f.name] = _schema(tp)
        if not f.metadata.get("omit_none"):
            required.append(f.name)
    out: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    if cls.UNKNOWN_KEYS == "refuse":
        out["additionalProperties"] = False
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    if doc:
        out["description"] = " ".join(doc.split())
    return out


def _schema(tp: Any) -> dict[str, Any]:
    if tp is Any:
        return {}
    if isinstance(tp, type) and issubclass(tp, Wire):
        return json_schema(tp)
    origin = typing.get_origin(tp)
    if _is_union(tp):
        others = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _schema(others[0])
        if "type" in inner and isinstance(inner["type"], str):
            return {**inner, "type": [inner["type"], "null"]}
        return {"anyOf": [inner, {"type": "null"}]}
    if origin is Literal:
        return {"type": "string", "enum": list(typing.get_args(tp))}
    if origin is list:
        return {"type": "array", "items": _schema(typing.get_args(tp)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema(typing.get_args(tp)[1])}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in simple:
        return {"type": simple[tp]}
    if tp is bytes:
        return {"type": "string", "contentEncoding": "base64"}
    raise TypeError(f"unsupported field type {tp!r}")
