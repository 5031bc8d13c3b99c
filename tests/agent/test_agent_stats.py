"""Connection stats counters."""

from __future__ import annotations

import pytest

from agent.stats import ConnStats


def test_stats_counters() -> None:
    stats = ConnStats()
    stats.session_opened()
    stats.add_in(10)
    stats.add_out(20)
    first = stats.snapshot()
    assert (first.sessions_total, first.sessions_open, first.bytes_in, first.bytes_out) == (
        1, 1, 10, 20,
    )
    stats.session_opened()
    stats.session_closed()
    stats.add_in(5)
    delta = stats.snapshot().since(first)
    assert (delta.sessions_total, delta.sessions_open, delta.bytes_in, delta.bytes_out) == (
        1, 1, 5, 0,
    )
    stats.session_closed()
    with pytest.raises(RuntimeError, match="without a matching"):
        stats.session_closed()
