"""coderd's OpenAPI response schemas come from the sdk types the routes answer with."""

from __future__ import annotations

from typing import Any

from coderd.api.app import routes
from coderd.api.router import openapi
from sdk import types as t
from sdk.types.wire import json_schema


def _schema_at(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    op = doc["paths"]["/api/v2" + path][method]
    ok = next(v for k, v in op["responses"].items() if k.startswith("2") and "content" in v)
    schema: dict[str, Any] = ok["content"]["application/json"]["schema"]
    return schema


def test_every_typed_route_references_its_types_schema() -> None:
    table = routes()
    doc = openapi(table)
    assert doc["openapi"] == "3.1.0"
    components = doc["components"]["schemas"]
    typed = [r for r in table if r.returns is not None]
    assert len(typed) >= 20
    for r in typed:
        schema = _schema_at(doc, r.path, r.method.lower())
        cls = r.returns[0] if isinstance(r.returns, list) else r.returns
        assert isinstance(cls, type)
        ref = {"$ref": f"#/components/schemas/{cls.__name__}"}
        assert schema == ({"type": "array", "items": ref} if isinstance(r.returns, list)
                          else ref), r
        assert components[cls.__name__] == json_schema(cls)
    assert _schema_at(doc, "/workspaces/{workspace}", "get") == {
        "$ref": "#/components/schemas/Workspace"}
    workspace = components["Workspace"]
    assert workspace["properties"]["latest_build"]["type"] == ["object", "null"]
    assert set(workspace["required"]) == {f for f in t.Workspace.__dataclass_fields__}
