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


def test_tunnel_summary_takes_median_and_max_over_measured_sessions() -> None:
    from agent.stats import tunnel_summary

    assert tunnel_summary(None)["rtt_ms_median"] is None
    got = tunnel_summary({"dropped": {}, "sessions": {
        "a": {"path": "direct", "rtt": 0.001},
        "b": {"path": "relay", "rtt": 0.003},
        "c": {"path": "relay", "rtt": 0.010},
        "d": {"path": "none", "rtt": None},  # handshaking: counted, no RTT yet
        "e": {"path": "weird", "rtt": "x"},
    }})
    assert got == {"sessions": 5, "rtt_ms_median": 3.0, "rtt_ms_max": 10.0,
                   "paths": {"direct": 1, "relay": 2, "none": 2}}
