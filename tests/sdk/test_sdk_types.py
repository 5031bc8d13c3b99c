"""The API values: JSON round trips, strict parsing that names the field, and
the JSON Schema derived from the fields."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sdk import types as t
from sdk.types.wire import WireError, json_schema

BUILD: dict[str, Any] = {
    "id": "b1", "workspace_id": "w1", "build_number": 1, "transition": "start",
    "template_version_id": "v1", "initiator_id": "u1", "job_id": "j1", "status": "running",
    "variables": {"a": "b"}, "created_at": 1.5, "started_at": None, "completed_at": None,
    "error": None,
}
WORKSPACE: dict[str, Any] = {
    "id": "w1", "name": "dev", "owner_id": "u1", "owner_name": "alice", "template_id": "t1",
    "template_name": "local", "created_at": 1.0, "deleted": False, "status": "starting",
    "latest_build": BUILD, "agents": {"total": 1, "connected": 0},
}
AGENT: dict[str, Any] = {
    "id": "a1", "name": "main", "resource_id": None, "os": "linux", "arch": "amd64",
    "directory": "/home/x", "created_at": 2.0, "last_connected_at": None,
    "disconnected_at": None, "status": "connecting", "lifecycle_state": "created",
    "lifecycle_changed_at": None, "ports": [{"port": 22, "address": "", "family": "tcp",
                                              "process": ""}],
    "stats": {}, "tunnel": {}, "reported_at": None,
}


def _round_trip(cls: type[t.Wire], obj: dict[str, Any]) -> None:
    value = cls.from_json(json.loads(json.dumps(obj)))
    assert value.to_json() == obj
    assert cls.from_json(value.to_json()) == value


@pytest.mark.parametrize(("cls", "obj"), [
    (t.Build, BUILD),
    (t.Build, {**BUILD, "resources": [], "agents": [AGENT]}),
    (t.Workspace, WORKSPACE),
    (t.Workspace, {**WORKSPACE, "latest_build": None}),
    (t.User, {"id": "u", "username": "a", "email": "a@x", "roles": ["owner"],
              "created_at": 1}),
    (t.Session, {"session_token": "s", "expires_at": 9.0, "user_id": "u"}),
    (t.Session, {"session_token": "s", "expires_at": 9.0, "user_id": "u", "redirect": "/x"}),
    (t.BuildLogs, {"logs": [{"id": 1, "created_at": 1.0, "level": "info", "stage": "x",
                             "output": "hi"}], "status": "running", "done": False}),
    (t.Manifest, {
        "agent_id": "a", "agent_name": "main", "workspace_id": "w", "workspace_name": "dev",
        "owner_id": "u", "owner_name": "alice", "build_id": "b", "os": "linux",
        "arch": "amd64", "directory": "", "startup_script": "", "env": {"A": "1"},
        "shutdown_script": "", "startup_script_timeout": None, "start_blocks_login": False,
        "access_url": "http://x", "relay_map": {"regions": [{
            "region_id": 1, "code": "primary", "name": "p", "url": "http://x",
            "derp_url": "http://x/derp", "public_key": ""}]}}),
    (t.Stats, {"services": {"ssh": {"sessions_total": 1}}}),
    (t.Stats, {"services": {}, "tunnel": {"sessions": 0, "paths": {}}}),
])
def test_round_trip_keeps_the_wire_shape(cls: type[t.Wire], obj: dict[str, Any]) -> None:
    _round_trip(cls, obj)


@pytest.mark.parametrize(("cls", "obj", "field"), [
    (t.Build, {**BUILD, "build_number": "1"}, "build_number"),
    (t.Build, {**BUILD, "build_number": True}, "build_number"),
    (t.Build, {**BUILD, "variables": {"a": 1}}, "variables.a"),
    (t.Workspace, {**WORKSPACE, "latest_build": {**BUILD, "status": 3}},
     "latest_build.status"),
    (t.Workspace, {**WORKSPACE, "agents": None}, "agents"),
    (t.Build, {**BUILD, "agents": [{**AGENT, "ports": {}}]}, "agents[0].ports"),
    (t.User, {"id": "u", "username": "a", "email": "a@x", "roles": ["owner"]}, "created_at"),
    (t.BuildLogs, {"logs": [], "status": "x", "done": "no"}, "done"),
])
def test_wrong_types_name_the_field(cls: type[t.Wire], obj: dict[str, Any], field: str) -> None:
    with pytest.raises(WireError) as caught:
        cls.from_json(obj)
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith(field + ": ")


def test_not_an_object_and_unknown_keys() -> None:
    with pytest.raises(ValueError, match="User must be a JSON object"):
        t.User.from_json([1])
    # API responses ignore keys a newer server added; job input refuses them.
    assert t.FirstUser.from_json({"exists": True, "new": 1}) == t.FirstUser(True)
    with pytest.raises(t.ProtocolError, match="unknown field"):
        t.BuildResult.from_json({"state": None, "new": 1})


def test_job_input_round_trip_and_bytes_as_base64() -> None:
    bi = t.BuildInput(b"tar", "stop", "dev", "alice", "tok", "http://x", b"{}", {"a": "b"}, "w1")
    obj = bi.to_json()
    assert obj["template"] == "dGFy"
    assert obj["state"] == "e30="
    assert t.BuildInput.from_json(json.loads(json.dumps(obj))) == bi
    with pytest.raises(t.ProtocolError, match="build input transition"):
        t.BuildInput.from_json({**obj, "transition": "reboot"})


def test_json_schema_follows_the_fields() -> None:
    schema = json_schema(t.Build)
    assert schema["properties"]["build_number"] == {"type": "integer"}
    assert schema["properties"]["started_at"] == {"type": ["number", "null"]}
    assert schema["properties"]["variables"] == {
        "type": "object", "additionalProperties": {"type": "string"}}
    assert "resources" not in schema["required"]
    assert "id" in schema["required"]
    assert schema["properties"]["agents"]["type"] == ["array", "null"]
    job = json_schema(t.BuildInput)
    assert job["additionalProperties"] is False
    assert job["properties"]["transition"] == {"type": "string",
                                               "enum": ["start", "stop", "delete"]}
    assert job["properties"]["template"]["contentEncoding"] == "base64"
