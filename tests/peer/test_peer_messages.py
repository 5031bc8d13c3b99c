"""peer.messages: coordinator messages as plain text, never a crash (the client side)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer.errors import MessageError as CoordinationError
from peer.messages import (
    Node,
    Peer,
    PeerGone,
    Welcome,
    node_message,
    parse_endpoint,
    parse_server_message,
)
from peer.relaymap import Region, RelayMap


def parse_relay_map(obj: object) -> tuple[Region, ...]:
    return RelayMap.parse(obj).regions

KEY = "ab" * 32
MAP = {"regions": [
    {"region_id": 1, "code": "primary", "name": "p", "url": "http://127.0.0.1:3000"},
    {"region_id": "2", "url": "http://x"},  # bad id: skipped
    {"region_id": 3, "url": "ftp://x"},  # bad scheme: skipped
    "junk",
]}


def test_welcome_peer_gone() -> None:
    msg = parse_server_message(json.dumps({"type": "welcome", "id": "c1", "relay_map": MAP}))
    assert msg == Welcome("c1", (Region(1, "primary", "p", "http://127.0.0.1:3000"),))
    peer = parse_server_message(json.dumps({"type": "peer", "id": "a1", "node": {
        "key": KEY, "home_region": 1, "endpoints": ["127.0.0.1:41641", "[::1]:5", "bad", 7],
        "region_latency_ms": {"1": 0.5, "2": "x"}}}))
    assert peer == Peer("a1", Node(bytes.fromhex(KEY), 1, (("127.0.0.1", 41641), ("::1", 5)),
                                   {"1": 0.5}))
    assert parse_server_message('{"type": "peer_gone", "id": "a1"}') == PeerGone("a1")
    assert parse_server_message('{"type": "future"}') is None


@pytest.mark.parametrize("text", [
    "", "not json", "[]", "null", '{"type": "peer", "node": {"key": "XX"}}',
    '{"type": "peer", "node": null}', '{"type": "welcome", "relay_map": {}}',
    "[" * 10000, "x" * 300_000,
])
def test_malformed_messages_are_coordination_errors(text: str) -> None:
    with pytest.raises(CoordinationError):
        parse_server_message(text)


def test_error_message_is_raised_with_its_text() -> None:
    with pytest.raises(CoordinationError, match="coordinator: go away"):
        parse_server_message('{"type": "error", "message": "go away"}')


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_coordination_error(text: str) -> None:
    with contextlib.suppress(CoordinationError):
        parse_server_message(text)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                         max_size=4),
                    max_leaves=20))
def test_any_json_node_parses_or_raises(obj: object) -> None:
    for kind in ("peer", "welcome"):
        with contextlib.suppress(CoordinationError):
            parse_server_message(json.dumps({"type": kind, "node": obj, "relay_map": obj}))


def test_endpoint_and_node_message() -> None:
    assert parse_endpoint("h:1") == ("h", 1)
    for bad in ("h", ":1", "h:0", "h:65536", "h:x"):
        assert parse_endpoint(bad) is None
    out = json.loads(node_message(bytes(range(32)), 2, {2: 1.23456}))
    assert out == {"type": "node", "node": {"key": bytes(range(32)).hex(), "home_region": 2,
                                            "region_latency_ms": {"2": 1.235}}}


def test_relay_map_requires_regions() -> None:
    with pytest.raises(CoordinationError):
        parse_relay_map({"nope": []})
    assert len(parse_relay_map(MAP)) == 1
