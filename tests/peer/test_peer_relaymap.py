"""peer.relaymap: several regions with several nodes and health; lenient per entry."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer.errors import MessageError
from peer.relaymap import Region, RelayMap, RelayNode

MAP = {"regions": [
    {"region_id": 1, "code": "primary", "name": "p", "url": "http://a:1",
     "nodes": [{"url": "http://a:1", "public_key": "ab"}, {"url": "http://b:1"},
               {"url": "ftp://c"}, 7]},
    {"region_id": 2, "code": "eu", "healthy": False, "nodes": [{"url": "https://eu"}]},
    {"region_id": 1, "url": "http://dup"},  # a repeated id: the first wins
    {"region_id": -1, "url": "http://neg"}, {"region_id": 3}, "junk",
]}


def test_regions_nodes_and_health() -> None:
    m = RelayMap.parse(MAP)
    assert [r.region_id for r in m.regions] == [1, 2]
    one, two = m.regions
    assert one.nodes == (RelayNode("http://a:1", public_key="ab"), RelayNode("http://b:1"))
    assert one.node_urls == ("http://a:1", "http://b:1")
    assert two.url == "https://eu"
    assert not two.healthy
    assert m.usable == (one,)
    assert m.region(2) is two
    assert m.region(9) is None
    assert m.pick(2) is two
    assert m.pick(9) is one


def test_json_round_trip_keeps_the_old_fields() -> None:
    m = RelayMap((Region(1, "primary", "p", "http://a:1",
                         (RelayNode("http://a:1", "http://a:1/derp", "ab", "r1"),)),))
    out = m.to_json()
    r = out["regions"][0]
    assert (r["region_id"], r["url"], r["derp_url"], r["public_key"]) == (
        1, "http://a:1", "http://a:1/derp", "ab")
    assert RelayMap.parse(out) == m
    assert Region(5, url="http://x").to_json()["derp_url"] == "http://x/derp"


@pytest.mark.parametrize("bad", [None, [], {}, {"regions": {}}, {"regions": "x"}])
def test_not_a_map_is_a_message_error(bad: Any) -> None:
    with pytest.raises(MessageError):
        RelayMap.parse(bad)


def test_empty_map_picks_nothing() -> None:
    assert RelayMap.parse({"regions": []}).pick(1) is None


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(
                        st.sampled_from(["regions", "region_id", "url", "nodes", "healthy",
                                         "code"]), c, max_size=5), max_leaves=25))
def test_any_json_parses_or_raises_message_error(obj: object) -> None:
    with contextlib.suppress(MessageError):
        RelayMap.parse(obj)
        RelayMap.parse({"regions": [obj]})


def test_the_servers_map_is_what_old_readers_parse() -> None:
    from coderd.server import primary_relay_map

    out = primary_relay_map("http://127.0.0.1:3000", "cd" * 32).to_json()
    r = out["regions"][0]
    assert {k: r[k] for k in ("region_id", "code", "name", "url", "derp_url", "public_key")} == {
        "region_id": 1, "code": "primary", "name": "primary (embedded)",
        "url": "http://127.0.0.1:3000", "derp_url": "http://127.0.0.1:3000/derp",
        "public_key": "cd" * 32}
    assert RelayMap.parse(out).usable[0].node_urls == ("http://127.0.0.1:3000",)
