"""Every counter ``derp.metrics`` documents exists from the start and is counted somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import derp
from derp.errors import ProtocolErrorReason
from derp.metrics import CloseReason, DropReason, Metrics

REASONS = {"drops": DropReason, "closes": CloseReason, "protocol_errors": ProtocolErrorReason}
SOURCE = "\n".join(
    p.read_text() for p in Path(derp.__file__).parent.glob("*.py") if p.name != "metrics.py"
)


def documented_counters() -> list[str]:
    doc = Metrics.__doc__ or ""
    names: list[str] = []
    for line in doc.split("Attributes:")[1].splitlines():
        m = re.match(r"\s{8}([a-z_ /]+):", line)
        if m:
            names += [n.strip() for n in m.group(1).split("/")]
    return names


def test_the_documented_counters_are_the_counters() -> None:
    assert sorted(documented_counters()) == sorted(Metrics.__slots__)


@pytest.mark.parametrize("name", documented_counters())
def test_each_documented_counter_appears_in_the_snapshot_and_is_updated(name: str) -> None:
    assert name in Metrics().snapshot()
    if name not in REASONS:
        # Bumped (or set) by the server or a mesh link, not only declared.
        assert re.search(rf"\b(m|metrics)\.{name}\s*([+-]=|=)", SOURCE), name


ALL_REASONS = [r for enum in REASONS.values() for r in enum]


@pytest.mark.parametrize("reason", ALL_REASONS, ids=lambda r: f"{type(r).__name__}.{r.name}")
def test_every_reason_starts_at_zero_counts_and_is_used(
    reason: DropReason | CloseReason | ProtocolErrorReason,
) -> None:
    field = next(k for k, enum in REASONS.items() if isinstance(reason, enum))
    m = Metrics()
    assert m.snapshot()[field] == {str(r): 0 for r in type(reason)}
    if isinstance(reason, DropReason):
        m.drop(reason, 3)
    elif isinstance(reason, CloseReason):
        m.close(reason)
    else:
        m.protocol_errors[reason] += 1
    snap = m.snapshot()[field]
    assert isinstance(snap, dict)
    assert snap[reason.value] == (3 if isinstance(reason, DropReason) else 1)
    # A reason nobody counts is a lie in the docs: each one is used in the code.
    assert f"{type(reason).__name__}.{reason.name}" in SOURCE


def test_reasons_keep_their_metric_key_values() -> None:
    assert DropReason.DUPLICATE_CLIENT == "duplicate_client"
    assert f"{CloseReason.REPLACED}" == "replaced"
    assert str(ProtocolErrorReason.BAD_MAGIC) == "bad_magic"
