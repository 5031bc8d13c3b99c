"""peer.messages: the one codec -- strict (coderd reading a peer) and lenient (a peer
reading coderd); every malformed input is a MessageError, never another exception."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer.errors import MessageError
from peer.messages import (
    MAX_MESSAGE,
    Error,
    Node,
    NodeMessage,
    Peer,
    PeerGone,
    Welcome,
    format_endpoint,
    parse_node,
    parse_node_message,
    parse_server_message,
)
from peer.relaymap import Region

KEY = bytes(range(32))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20)


def test_node_round_trips_through_both_directions() -> None:
    node = Node(KEY, 3, (("127.0.0.1", 41641), ("::1", 5)), {"3": 1.5, "1": 20.0})
    assert parse_node_message(NodeMessage(node).encode()) == node
    peer = parse_server_message(Peer("c1", node).encode())
    assert peer == Peer("c1", node)
    assert json.loads(Peer("c1", node).encode())["node"]["endpoints"] == [
        "127.0.0.1:41641", "[::1]:5"]
    assert parse_server_message(PeerGone("c1").encode()) == PeerGone("c1")
    welcome = Welcome("me", (Region(1, "p", "primary", "http://127.0.0.1:1"),))
    assert parse_server_message(welcome.encode()) == welcome


def test_a_peers_node_message_leaves_out_empty_fields() -> None:
    assert json.loads(NodeMessage(Node(KEY)).encode()) == {
        "type": "node", "node": {"key": KEY.hex(), "home_region": 0}}
    assert Node(KEY).to_json() == {"key": KEY.hex(), "home_region": 0,
                                   "region_latency_ms": {}, "endpoints": []}


def test_error_is_raised_with_its_text_and_unknown_types_are_none() -> None:
    with pytest.raises(MessageError, match="coordinator: no"):
        parse_server_message(Error("no").encode())
    assert parse_server_message('{"type": "later"}') is None


@pytest.mark.parametrize("node", [
    {"key": KEY.hex(), "home_region": "1"},
    {"key": KEY.hex(), "endpoints": ["h:1", "nope"]},
    {"key": KEY.hex(), "endpoints": "h:1"},
    {"key": KEY.hex(), "region_latency_ms": {"1": -1}},
    {"key": KEY.hex(), "region_latency_ms": {str(i): 1 for i in range(40)}},
    {"key": KEY.hex(), "new_field": 1},
])
def test_strict_refuses_what_lenient_drops(node: dict[str, Any]) -> None:
    with pytest.raises(MessageError):
        parse_node(node, strict=True)
    assert parse_node(node, strict=False).key == KEY


def test_node_message_limit() -> None:
    big = json.dumps({"type": "node", "node": {"key": KEY.hex()}, "pad": "x" * MAX_MESSAGE})
    with pytest.raises(MessageError, match="too large"):
        parse_node_message(big)


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_any_bytes_or_text_parse_or_raise_message_error(data: bytes | str) -> None:
    for parse in (parse_node_message, parse_server_message):
        with contextlib.suppress(MessageError):
            parse(data)


@given(json_values)
def test_any_json_in_any_message_parses_or_raises_message_error(obj: object) -> None:
    for kind in ("node", "peer", "welcome", "peer_gone", "error"):
        text = json.dumps({"type": kind, "node": obj, "relay_map": obj, "id": obj,
                           "message": obj})
        with contextlib.suppress(MessageError):
            parse_server_message(text)
        with contextlib.suppress(MessageError):
            parse_node_message(json.dumps({"type": "node", "node": obj}))
        for strict in (True, False):
            with contextlib.suppress(MessageError):
                node = parse_node(obj, strict=strict)
                assert parse_node(node.to_json(), strict=True).to_json() == node.to_json()


def test_format_endpoint() -> None:
    assert format_endpoint(("::1", 2)) == "[::1]:2"
    assert format_endpoint(("h", 2)) == "h:2"
