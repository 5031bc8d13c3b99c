"""A stream's send side on its own: the transition table, writes, acks, loss, abort."""

from __future__ import annotations

import itertools

import pytest

from tunnel.errors import IllegalTransition
from tunnel.send_side import SEND_TRANSITIONS, EmitStatus, SendSide, SendState

ALL_PAIRS = list(itertools.product(SendState, SendState))


def path_to(state: SendState) -> list[SendState]:
    """The legal moves from SEND to ``state``, found in the table itself."""
    paths = {SendState.SEND: list[SendState]()}
    todo = [SendState.SEND]
    while todo:
        here = todo.pop(0)
        for nxt in SEND_TRANSITIONS[here]:
            if nxt not in paths:
                paths[nxt] = [*paths[here], nxt]
                todo.append(nxt)
    return paths[state]


def side_in(state: SendState) -> SendSide:
    side = SendSide(capacity=1000, peer_max=1000)
    for step in path_to(state):
        side.move(step)
    assert side.state is state
    return side


def test_every_state_is_reachable() -> None:
    for state in SendState:
        assert side_in(state).done == (state in {SendState.DATA_RECVD, SendState.RESET_SENT})


def test_the_table_names_every_state() -> None:
    assert set(SEND_TRANSITIONS) == set(SendState)


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS)
def test_every_move_is_legal_exactly_when_the_table_lists_it(
    current: SendState, target: SendState
) -> None:
    side = side_in(current)
    if target in SEND_TRANSITIONS[current]:
        side.move(target)
        assert side.state is target
    else:
        with pytest.raises(IllegalTransition):
            side.move(target)
        assert side.state is current  # unchanged


@pytest.mark.parametrize("state", [SendState.DATA_RECVD, SendState.RESET_SENT])
def test_an_ended_direction_cannot_be_aborted(state: SendState) -> None:
    side = side_in(state)
    with pytest.raises(IllegalTransition):
        side.abort()
    assert side.done


def test_writes_stop_at_the_capacity_and_after_finish() -> None:
    side = SendSide(capacity=10)
    assert side.write(b"x" * 25) == 10
    assert side.space() == 0
    assert side.finish()
    assert not side.finish()  # a second send_eof is a no-op
    side.buf.clear()
    assert side.write(b"y") == 0
    assert side.state is SendState.FIN_QUEUED


def emit(side: SendSide, limit: int = 1000, session_room: int = 10**9) -> tuple:
    parts: list = []
    items: list = []
    _size, sent, resent, status = side.emit(1, parts, items, 0, limit, session_room, 0)
    return items, sent, resent, status


def test_fin_goes_out_with_the_last_bytes_and_done_needs_every_ack() -> None:
    side = SendSide(capacity=100, peer_max=100)
    side.write(b"abc")
    side.finish()
    items, sent, _, status = emit(side)
    assert items == [(1, 0, 3, True)]
    assert sent == 3
    assert status is EmitStatus.IDLE
    assert side.state is SendState.DATA_SENT
    assert side.on_acked(0, 3, True)
    assert side.state is SendState.DATA_RECVD
    assert side.done


def test_fin_acked_before_the_bytes_waits_for_them() -> None:
    side = SendSide(capacity=100, peer_max=100)
    side.write(b"abcdef")
    side.finish()
    side.emit(1, [], [], 0, 1000, 100, 0)
    side.on_acked(3, 3, True)  # the tail and the FIN; the head is still out
    assert side.state is SendState.DATA_SENT
    side.on_acked(0, 3, False)
    assert side.state is SendState.DATA_RECVD


def test_new_bytes_stop_at_the_peers_stream_credit_and_the_session_room() -> None:
    side = SendSide(capacity=100, peer_max=4)
    side.write(b"abcdefgh")
    assert emit(side)[1] == 4
    side.peer_max = 100
    assert emit(side, session_room=2)[1] == 2


def test_lost_bytes_are_resent_first_and_a_lost_fin_again() -> None:
    side = SendSide(capacity=100, peer_max=100)
    side.write(b"abcdef")
    side.finish()
    emit(side)
    assert side.on_lost(0, 6, True)
    items, sent, resent, _ = emit(side)
    assert items == [(1, 0, 6, False), (1, 6, 0, True)]
    assert (sent, resent) == (0, 6)


def test_abort_drops_the_buffer_and_ignores_later_acks_and_losses() -> None:
    side = SendSide(capacity=100, peer_max=100)
    side.write(b"abcdef")
    emit(side, limit=20)  # a few bytes leave
    final = side.next
    side.write(b"more")
    assert side.abort() == final
    assert side.state is SendState.RESET_SENT
    assert not side.buf
    assert not side.on_lost(0, final, False)
    assert not side.on_acked(0, final, False)
    assert not side.retx
    assert side.write(b"x") == 0


def test_stop_is_noted_once() -> None:
    side = SendSide(capacity=10)
    assert side.on_stop(7)
    assert not side.on_stop(8)
    assert side.stopped == 7
