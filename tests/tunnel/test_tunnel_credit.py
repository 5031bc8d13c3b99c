"""Session credit on its own: both directions, top-ups, violations, a window that grows."""

from __future__ import annotations

import pytest

from tunnel.credit import INITIAL_MAX_DATA, SessionCredit
from tunnel.errors import FlowControlError


def test_a_window_above_the_initial_credit_is_announced_at_once() -> None:
    assert SessionCredit(2 * INITIAL_MAX_DATA).dirty
    assert not SessionCredit(INITIAL_MAX_DATA).dirty


def test_send_room_follows_the_peers_max_data() -> None:
    c = SessionCredit(INITIAL_MAX_DATA)
    c.sent = 100
    assert c.send_room() == INITIAL_MAX_DATA - 100
    assert not c.on_max_data(INITIAL_MAX_DATA)  # not a raise: ignored
    assert c.on_max_data(INITIAL_MAX_DATA + 5)
    assert c.send_room() == INITIAL_MAX_DATA - 95


def test_receiving_beyond_the_limit_counts_nothing() -> None:
    c = SessionCredit(INITIAL_MAX_DATA)
    c.on_receive(c.limit - 1)
    with pytest.raises(FlowControlError):
        c.on_receive(2)
    assert c.received == c.limit - 1


def test_half_the_window_consumed_grants_consumed_plus_window() -> None:
    c = SessionCredit(2 * INITIAL_MAX_DATA)
    c.dirty = False
    c.consume(INITIAL_MAX_DATA - 1)
    assert not c.dirty
    c.consume(1)
    assert c.dirty
    assert c.limit == INITIAL_MAX_DATA + 2 * INITIAL_MAX_DATA


def test_a_grown_window_is_what_the_next_top_up_grants() -> None:
    c = SessionCredit(2 * INITIAL_MAX_DATA)
    c.window = 8 * INITIAL_MAX_DATA  # auto-tuning will set this
    c.consume(INITIAL_MAX_DATA)
    assert c.limit == 9 * INITIAL_MAX_DATA
