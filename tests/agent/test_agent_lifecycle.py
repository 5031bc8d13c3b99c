"""The lifecycle state machine: its table, timestamps and errors."""

from __future__ import annotations

import itertools

import pytest

from agent.lifecycle import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    Lifecycle,
    State,
    shutdown_outcome,
    startup_outcome,
)


def test_happy_path_records_each_state_with_its_time() -> None:
    life = Lifecycle(at=10.0)
    assert life.state is State.CREATED
    for at, state in enumerate(
        [State.STARTING, State.READY, State.SHUTTING_DOWN, State.OFF], start=11
    ):
        entry = life.advance(state, at=float(at))
        assert entry.state is state
        assert life.changed_at == at
    assert [(t.state, t.at) for t in life.history] == [
        (State.CREATED, 10.0),
        (State.STARTING, 11.0),
        (State.READY, 12.0),
        (State.SHUTTING_DOWN, 13.0),
        (State.OFF, 14.0),
    ]


@pytest.mark.parametrize("end", [State.READY, State.START_ERROR, State.START_TIMEOUT])
def test_every_start_outcome_can_shut_down(end: State) -> None:
    life = Lifecycle(at=0)
    life.advance(State.STARTING, at=1)
    life.advance(end, at=2)
    life.advance(State.SHUTTING_DOWN, at=3)
    assert life.can(State.SHUTDOWN_TIMEOUT)


def test_table_matches_the_issue() -> None:
    assert TRANSITIONS[State.STARTING] == {State.READY, State.START_ERROR, State.START_TIMEOUT}
    assert TRANSITIONS[State.SHUTTING_DOWN] == {
        State.OFF, State.SHUTDOWN_ERROR, State.SHUTDOWN_TIMEOUT,
    }
    assert {State.OFF, State.SHUTDOWN_ERROR, State.SHUTDOWN_TIMEOUT} == TERMINAL
    assert set(TRANSITIONS) == set(State)


def reach(state: State) -> Lifecycle:
    """A lifecycle driven to ``state`` along legal moves (breadth-first)."""
    paths: dict[State, list[State]] = {State.CREATED: []}
    queue = [State.CREATED]
    while queue:
        here = queue.pop(0)
        for nxt in sorted(TRANSITIONS[here], key=lambda s: s.value):
            if nxt not in paths:
                paths[nxt] = [*paths[here], nxt]
                queue.append(nxt)
    life = Lifecycle(at=0)
    for at, step in enumerate(paths[state], start=1):
        life.advance(step, at=at)
    assert life.state is state
    return life


def test_every_move_outside_the_table_is_refused_and_changes_nothing() -> None:
    for current, target in itertools.product(State, State):
        if target in TRANSITIONS[current]:
            continue
        life = reach(current)
        before = life.history
        with pytest.raises(IllegalTransition) as info:
            life.advance(target, at=100)
        assert info.value.current is current
        assert info.value.target is target
        assert current.value in str(info.value)
        assert life.history == before


def test_ready_cannot_go_back_to_starting() -> None:
    life = Lifecycle(at=0)
    life.advance(State.STARTING, at=1)
    life.advance(State.READY, at=2)
    with pytest.raises(IllegalTransition, match="from ready to starting"):
        life.advance(State.STARTING, at=3)


def test_time_cannot_run_backwards() -> None:
    life = Lifecycle(at=5)
    with pytest.raises(ValueError, match="before"):
        life.advance(State.STARTING, at=4)
    assert life.state is State.CREATED


def test_outcomes() -> None:
    assert startup_outcome(0, False) is State.READY
    assert startup_outcome(1, False) is State.START_ERROR
    assert startup_outcome(None, False) is State.START_ERROR
    assert startup_outcome(-9, True) is State.START_TIMEOUT
    assert shutdown_outcome(0, False) is State.OFF
    assert shutdown_outcome(2, False) is State.SHUTDOWN_ERROR
    assert shutdown_outcome(None, True) is State.SHUTDOWN_TIMEOUT


def test_state_values_are_the_api_strings() -> None:
    assert [s.value for s in State] == [
        "created", "starting", "ready", "start_error", "start_timeout",
        "shutting_down", "off", "shutdown_error", "shutdown_timeout",
    ]
