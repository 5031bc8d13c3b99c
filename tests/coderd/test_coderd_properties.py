"""Property tests (Hypothesis) of coderd's input parsers: any input either parses
or raises the parser's own error, never anything else."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import urllib.parse

from hypothesis import given, settings
from hypothesis import strategies as st

from coderd.api.schema import ApiError, Field, parse_json_body
from coderd.archive import ArchiveError, check_template_archive
from coderd.auth import safe_redirect, token_from_headers
from coderd.coordinator import CoordinatorError, Event, parse_peer_message

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)

SCHEMA = {
    "name": Field("string", required=True, max_len=8, pattern=r"[a-z]+"),
    "n": Field("integer", minimum=0, maximum=10),
    "flag": Field("boolean"),
    "vars": Field("string-map"),
    "choice": Field("string", enum=("a", "b")),
}


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64)))
def test_json_body_parses_or_raises_api_error(body: bytes) -> None:
    status = 0
    out: dict[str, object] = {"name": ""}
    try:
        out = parse_json_body(body, SCHEMA)
    except ApiError as exc:
        status = exc.status
    assert status == 0 or 400 <= status < 500
    assert set(out) <= set(SCHEMA)
    assert isinstance(out["name"], str)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values.map(json.dumps), st.text(max_size=64)))
def test_peer_messages_parse_or_raise_coordinator_error(text: str) -> None:
    try:
        node = parse_peer_message(text)
    except CoordinatorError:
        return
    assert len(node["key"]) == 64


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=64))
def test_events_decode_or_none(text: str) -> None:
    ev = Event.decode(text)
    assert ev is None or ev.kind in ("node", "hello", "gone")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_safe_redirect_never_leaves_the_origin(target: str) -> None:
    if safe_redirect(target):
        parts = urllib.parse.urlsplit(target)
        assert parts.scheme == ""
        assert parts.netloc == ""
        assert target.startswith("/")
        assert not target.startswith("//")
        assert "\\" not in target


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_cookie_parsing_never_raises(cookie: str) -> None:
    token_from_headers({"cookie": cookie})


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_archive_checker_raises_only_archive_error(data: bytes) -> None:
    with contextlib.suppress(ArchiveError):
        check_template_archive(data)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=5))
def test_archive_names_outside_the_template_are_refused(names: list[str]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name if i else name + ".tf")
            tar.addfile(info, io.BytesIO(b""))
    try:
        files = check_template_archive(buf.getvalue())
    except ArchiveError:
        return
    for f in files:
        assert not f.startswith("/")
        assert ".." not in f.split("/")
        assert "\\" not in f
