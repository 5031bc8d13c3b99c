"""The tunnel's reasons are closed lists, each one raised or counted somewhere."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import pytest

import tunnel
from tunnel.channel import Channel
from tunnel.errors import CloseReason, DropReason, ProtocolErrorReason, ResetReason
from tunnel.handshake import generate_private_key, public_key

ENUMS: list[type[StrEnum]] = [ProtocolErrorReason, DropReason, CloseReason, ResetReason]
SOURCE = "\n".join(
    p.read_text() for p in Path(tunnel.__file__).parent.glob("*.py") if p.name != "errors.py"
)


@pytest.mark.parametrize(
    "reason", [r for e in ENUMS for r in e], ids=lambda r: f"{type(r).__name__}.{r.name}"
)
def test_every_reason_is_used_by_the_code(reason: StrEnum) -> None:
    assert f"{type(reason).__name__}.{reason.name}" in SOURCE


def test_counter_keys_never_collide() -> None:
    # Channel.dropped holds drop reasons and protocol-error reasons side by side.
    assert not {str(r) for r in DropReason} & {str(r) for r in ProtocolErrorReason}


def test_a_dropped_datagram_is_counted_under_its_string_key() -> None:
    ch = Channel(generate_private_key(), public_key(generate_private_key()), instance=b"i" * 8)
    ch.receive(b"", 0.0)
    ch.receive(b"\x7f junk", 0.0)
    assert ch.dropped["empty"] == 1
    assert ch.dropped[DropReason.UNKNOWN_TYPE] == 1
    assert set(map(str, ch.dropped)) <= {str(r) for r in DropReason}
