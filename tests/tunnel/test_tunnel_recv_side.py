"""A stream's receive side on its own: the transition table, ordering, final size, credit."""

from __future__ import annotations

import itertools

import pytest

from tunnel.credit import SessionCredit
from tunnel.errors import FlowControlError, IllegalTransition
from tunnel.recv_side import RECV_TRANSITIONS, RecvSide, RecvState

ALL_PAIRS = list(itertools.product(RecvState, RecvState))


def fresh(window: int = 100, session: int = 1000) -> tuple[RecvSide, SessionCredit]:
    return RecvSide(window), SessionCredit(session)


def side_in(state: RecvState) -> RecvSide:
    """A side moved to ``state`` along legal moves found in the table itself."""
    paths = {RecvState.RECV: list[RecvState]()}
    todo = [RecvState.RECV]
    while todo:
        here = todo.pop(0)
        for nxt in RECV_TRANSITIONS[here]:
            if nxt not in paths:
                paths[nxt] = [*paths[here], nxt]
                todo.append(nxt)
    side = RecvSide(100)
    for step in paths[state]:
        side.move(step)
    assert side.state is state
    return side


def test_derived_flags_follow_the_state() -> None:
    for state in RecvState:
        side = side_in(state)
        assert side.done == (state in {RecvState.DATA_READ, RecvState.RESET_RECVD})
        assert side.aborted == (state is RecvState.RESET_RECVD)
        assert side.at_eof == (state is RecvState.DATA_READ)


def test_the_table_names_every_state() -> None:
    assert set(RECV_TRANSITIONS) == set(RecvState)


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS)
def test_every_move_is_legal_exactly_when_the_table_lists_it(
    current: RecvState, target: RecvState
) -> None:
    side = side_in(current)
    if target in RECV_TRANSITIONS[current]:
        side.move(target)
        assert side.state is target
    else:
        with pytest.raises(IllegalTransition):
            side.move(target)
        assert side.state is current


def test_out_of_order_bytes_are_delivered_in_order() -> None:
    rx, credit = fresh()
    rx.on_data(3, b"def", False, credit)
    assert not rx.buf
    rx.on_data(0, b"abc", False, credit)
    assert rx.read(100, credit) == b"abcdef"


def test_fin_then_reading_everything_reaches_data_read() -> None:
    rx, credit = fresh()
    rx.on_data(0, b"abc", True, credit)
    assert rx.state is RecvState.DATA_RECVD
    assert rx.read(2, credit) == b"ab"
    assert not rx.at_eof
    rx.read(2, credit)
    assert rx.state is RecvState.DATA_READ
    assert rx.at_eof
    assert rx.done


def test_an_empty_fin_ends_at_once() -> None:
    rx, credit = fresh()
    assert rx.on_data(0, b"", True, credit)
    assert rx.at_eof


def test_a_fin_before_the_bytes_knows_the_size_first() -> None:
    rx, credit = fresh()
    rx.on_data(3, b"def", True, credit)
    assert rx.state is RecvState.SIZE_KNOWN
    rx.on_data(0, b"abc", False, credit)
    assert rx.state is RecvState.DATA_RECVD


def test_a_duplicate_fin_is_absorbed() -> None:
    rx, credit = fresh()
    rx.on_data(0, b"abc", True, credit)
    rx.on_data(0, b"abc", True, credit)
    assert rx.read(100, credit) == b"abc"
    assert rx.at_eof


@pytest.mark.parametrize(
    ("offset", "data", "fin"),
    [
        (3, b"x", False),  # data after the FIN
        (0, b"ab", True),  # a FIN that moves the final size down
        (0, b"abcd", True),  # ... or up
    ],
)
def test_data_past_or_moving_the_final_size_is_a_flow_violation(
    offset: int, data: bytes, fin: bool
) -> None:
    rx, credit = fresh()
    rx.on_data(0, b"abc", True, credit)
    with pytest.raises(FlowControlError):
        rx.on_data(offset, data, fin, credit)
    assert rx.final_size == 3
    assert rx.read(100, credit) == b"abc"


def test_beyond_the_stream_window_is_a_flow_violation_and_counts_nothing() -> None:
    rx, credit = fresh(window=10)
    with pytest.raises(FlowControlError):
        rx.on_data(5, b"x" * 6, False, credit)
    assert rx.high == 0
    assert credit.received == 0
    assert not rx.ooo


def test_beyond_the_session_credit_is_a_flow_violation() -> None:
    credit = SessionCredit(2 << 20)
    a, b = RecvSide(credit.limit), RecvSide(credit.limit)
    a.on_data(0, b"x" * (credit.limit - 5), False, credit)
    with pytest.raises(FlowControlError):
        b.on_data(0, b"y" * 6, False, credit)
    assert b.high == 0


def test_reading_half_the_window_grants_more() -> None:
    rx, credit = fresh(window=10)
    rx.on_data(0, b"x" * 6, False, credit)
    rx.read(6, credit)
    assert rx.dirty
    assert rx.limit == 16


def test_a_window_that_grew_is_the_one_granted() -> None:
    rx, credit = fresh(window=10)
    rx.window = 40  # auto-tuning will set this
    rx.on_data(0, b"x" * 6, False, credit)
    rx.read(6, credit)
    assert rx.limit == 46


def test_reset_discards_and_counts_every_byte_consumed() -> None:
    rx, credit = fresh()
    rx.on_data(0, b"abc", False, credit)
    rx.on_data(5, b"fg", False, credit)
    assert rx.on_reset(9, credit)
    assert rx.state is RecvState.RESET_RECVD
    assert not rx.has_unread()
    assert credit.received == 9
    assert credit.consumed == 9
    assert not rx.on_reset(9, credit)  # a duplicate RESET changes nothing
    assert not rx.on_data(9, b"late", False, credit)  # nor does data after it


@pytest.mark.parametrize("final_size", [2, 4])
def test_reset_with_another_final_size_than_the_fin_is_a_flow_violation(
    final_size: int,
) -> None:
    rx, credit = fresh()
    rx.on_data(0, b"abc", True, credit)
    with pytest.raises(FlowControlError):
        rx.on_reset(final_size, credit)
    assert rx.state is RecvState.DATA_RECVD


def test_reset_below_what_arrived_or_beyond_the_window_is_a_flow_violation() -> None:
    rx, credit = fresh(window=10)
    rx.on_data(0, b"abcd", False, credit)
    with pytest.raises(FlowControlError):
        rx.on_reset(3, credit)
    with pytest.raises(FlowControlError):
        rx.on_reset(11, credit)
    assert rx.state is RecvState.RECV


def test_reset_racing_a_fin_wins_until_the_reader_saw_eof() -> None:
    rx, credit = fresh()
    rx.on_data(0, b"abc", True, credit)
    assert rx.on_reset(3, credit)  # unread bytes: the reset wins
    assert rx.aborted
    rx2, credit2 = fresh()
    rx2.on_data(0, b"abc", True, credit2)
    rx2.read(100, credit2)
    assert not rx2.on_reset(3, credit2)  # the reader had its EOF: too late
    assert rx2.at_eof


def test_close_read_discards_and_asks_for_stop_only_while_bytes_may_come() -> None:
    rx, credit = fresh()
    rx.on_data(0, b"abc", False, credit)
    assert rx.close_read(credit)
    assert not rx.buf
    assert credit.consumed == 3
    assert not rx.close_read(credit)  # once
    rx.on_data(3, b"de", True, credit)  # still arriving: discarded, counted
    assert not rx.buf
    assert rx.done
    done, credit = fresh()
    done.on_data(0, b"abc", True, credit)
    assert not done.close_read(credit)  # every byte is in: no STOP
    assert done.done
