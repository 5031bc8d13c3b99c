"""The daemon <-> coderd messages, as plain text and bytes."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisionerd import protocol as p

MESSAGES: list[p.Message] = [
    p.Hello("d1", "builtin-1", {"owner": "", "scope": "org"}, psk="k"),
    p.Hello("d1", "x"),
    p.Welcome("d1"),
    p.Acquire(),
    p.Job("j1", p.JOB_KIND_BUILD, {"a": [1, 2, {"b": None}]}),
    p.Log("j1", (p.LogLine("stdout", "hello ✓", "2026-01-01T00:00:00Z"), p.LogLine("stderr", ""))),
    p.Log("j1", ()),
    p.Heartbeat("j1"),
    p.HeartbeatAck("j1", cancel=True),
    p.HeartbeatAck("j1", cancel=False),
    p.Complete("j1", result={"state": None}),
    p.Complete("j1", error="boom"),
    p.Complete("j1", result={"state": "AA=="}, error="boom"),
    p.StateChunk("j1", "QUJD"),
    p.Completed("j1"),
    p.Error("go away"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_text_and_bytes(msg: p.Message) -> None:
    text = p.encode(msg)
    assert json.loads(text)["type"] == msg.TYPE
    assert p.decode(text) == msg
    assert p.decode(text.encode()) == msg


def test_wire_shape_is_stable() -> None:
    ack = '{"type":"heartbeat_ack","job_id":"j","cancel":true}'
    assert p.encode(p.HeartbeatAck("j", True)) == ack
    assert p.encode(p.Acquire()) == '{"type":"acquire"}'
    assert p.decode(b'{"type":"hello","daemon_id":"a","name":"b"}') == p.Hello("a", "b", {})


def test_hello_repr_hides_psk() -> None:
    assert "sekrit" not in repr(p.Hello("d", "n", psk="sekrit"))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[]",
        b'{"no":"type"}',
        b'{"type":5}',
        b'{"type":"nope"}',
        b'{"type":"acquire","extra":1}',
        b'{"type":"hello","daemon_id":"a"}',
        b'{"type":"hello","daemon_id":"a","name":"b","tags":{"k":1}}',
        b'{"type":"hello","daemon_id":"a","name":"b","tags":[]}',
        b'{"type":"heartbeat_ack","job_id":"j","cancel":"yes"}',
        b'{"type":"job","id":"j","kind":"k","input":[]}',
        b'{"type":"log","job_id":"j","lines":{}}',
        b'{"type":"log","job_id":"j","lines":[{"stream":"weird","line":"x"}]}',
        b'{"type":"log","job_id":"j","lines":[{"stream":"stdout"}]}',
        b'{"type":"log","job_id":"j","lines":[{"stream":"stdout","line":"x","z":1}]}',
        b'{"type":"complete","job_id":"j"}',
        b'{"type":"complete","job_id":"j","result":"x"}',
        b'{"type":"complete","job_id":"j","error":7}',
        b'{"type":"error"}',
    ],
)
def test_bad_messages_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode(data)
    assert info.value.close_code == p.CLOSE_PROTOCOL_ERROR


def test_limits() -> None:
    lines = [{"stream": "stdout", "line": "x"}] * (p.MAX_LOG_LINES + 1)
    with pytest.raises(p.ProtocolError, match="more than"):
        p.decode(json.dumps({"type": "log", "job_id": "j", "lines": lines}))
    long_line = [{"stream": "stdout", "line": "x" * (p.MAX_LOG_LINE + 1)}]
    with pytest.raises(p.ProtocolError, match="too long"):
        p.decode(json.dumps({"type": "log", "job_id": "j", "lines": long_line}))
    with pytest.raises(p.ProtocolError) as info:
        p.decode(b" " * (p.MAX_MESSAGE + 1))
    assert info.value.close_code == p.CLOSE_TOO_BIG


def test_encode_refuses_unserialisable() -> None:
    with pytest.raises(p.ProtocolError):
        p.encode(p.Job("j", "k", {"x": object()}))
    with pytest.raises(p.ProtocolError):
        p.encode(p.Job("j", "k", {"x": float("nan")}))


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_protocol_error(data: bytes) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.decode(data)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=3)
    | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=10,
)


@given(st.sampled_from(["hello", "job", "log", "complete", "heartbeat_ack", "x"]), JSONISH)
def test_any_json_object_decodes_or_protocol_error(kind: str, body: object) -> None:
    obj = dict(body) if isinstance(body, dict) else {"v": body}
    obj["type"] = kind
    with contextlib.suppress(p.ProtocolError):
        p.decode(json.dumps(obj))


def test_build_input_round_trip_and_repr() -> None:
    bi = p.BuildInput(
        template=b"\x00tar",
        transition="stop",
        workspace_name="w",
        workspace_owner="o",
        agent_token="secret-token",
        access_url="http://x",
        state=b"{}",
        variables={"a": "b"},
        build_id="b1",
    )
    obj = json.loads(json.dumps(bi.to_json()))
    assert p.BuildInput.from_json(obj) == bi
    assert "secret-token" not in repr(bi)
    obj["state"] = None
    assert p.BuildInput.from_json(obj).state is None


@pytest.mark.parametrize(
    "change",
    [
        {"transition": "reboot"},
        {"template": "not base64!"},
        {"template": 5},
        {"variables": {"a": 1}},
        {"extra": 1},
        {"workspace_name": None},
    ],
)
def test_build_input_validation(change: dict[str, object]) -> None:
    obj = p.BuildInput(b"t", "start", "w", "o", "tok", "http://x").to_json()
    obj.update(change)
    with pytest.raises(p.ProtocolError):
        p.BuildInput.from_json(obj)


def test_build_result_round_trip_and_validation() -> None:
    r = p.BuildResult(b"state", [{"address": "a"}], [{"name": "main"}])
    assert p.BuildResult.from_json(json.loads(json.dumps(r.to_json()))) == r
    assert p.BuildResult.from_json({"state": None}) == p.BuildResult(None)
    for bad in ({"resources": "x"}, {"agents": [1]}, {"state": 3}, {"other": 1}, []):
        with pytest.raises(p.ProtocolError):
            p.BuildResult.from_json(bad)


def test_split_state_keeps_small_and_chunks_big() -> None:
    small = {"state": "x" * p.STATE_CHUNK, "resources": []}
    assert p.split_state(small) == (small, [])
    assert p.split_state(None) == (None, [])
    big_state = "y" * (p.STATE_CHUNK * 2 + 5)
    result, pieces = p.split_state({"state": big_state, "agents": [1]})
    assert result == {"state": None, "agents": [1]}
    assert [len(x) for x in pieces] == [p.STATE_CHUNK, p.STATE_CHUNK, 5]
    assert "".join(pieces) == big_state
    # Every piece fits in one message well under 1 MiB.
    assert all(len(p.encode(p.StateChunk("j", x))) < 1 << 20 for x in pieces)
    with pytest.raises(p.ProtocolError, match="too long"):
        p.decode(p.encode(p.StateChunk("j", "z" * (p.STATE_CHUNK + 1))))


def test_log_buffer_bounds_lines_bytes_and_counts_drops() -> None:
    from provisionerd.daemon import LogBuffer

    buf = LogBuffer(limit=5)
    for i in range(8):
        buf.add("stdout", f"line {i}")
    batch = buf.take()
    assert batch[0].line == "[3 log lines dropped: output too fast]"
    assert [x.line for x in batch[1:]] == [f"line {i}" for i in range(3, 8)]
    assert len(buf) == 0
    for _ in range(10):
        buf.limit = 100
        buf.add("stderr", "x" * 60_000)
    sizes = []
    while len(buf):
        part = buf.take()
        sizes.append(len(part))
        assert len(p.encode(p.Log("j", part))) < 1 << 20
    assert sum(sizes) == 10
    assert len(sizes) > 1
