"""The agent's lifecycle state machine (sans-IO).

Theory of operation
-------------------
An agent reports one lifecycle state to coderd at a time, with the moment it
entered it::

    created ──> starting ──> ready
                   │    ├──> start_error
                   │    └──> start_timeout
    ready | start_error | start_timeout ──> shutting_down
    shutting_down ──> off | shutdown_error | shutdown_timeout

Every legal move is in :data:`TRANSITIONS`; anything else raises
:class:`IllegalTransition` and leaves the machine unchanged.  ``created`` may
also go straight to ``shutting_down`` (a stop before the start script ran).
The machine does no I/O and reads no clock: callers pass the timestamp, so
tests drive it with plain numbers and the agent with ``time.time()``.
:func:`startup_outcome` and :func:`shutdown_outcome` map a script's result to
the state it ends in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.Enum):
    """Lifecycle states; the values are what the API reports."""

    CREATED = "created"
    STARTING = "starting"
    READY = "ready"
    START_ERROR = "start_error"
    START_TIMEOUT = "start_timeout"
    SHUTTING_DOWN = "shutting_down"
    OFF = "off"
    SHUTDOWN_ERROR = "shutdown_error"
    SHUTDOWN_TIMEOUT = "shutdown_timeout"


_STARTED = frozenset({State.READY, State.START_ERROR, State.START_TIMEOUT})

# Every legal transition: state -> states it may move to.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.CREATED: frozenset({State.STARTING, State.SHUTTING_DOWN}),
    State.STARTING: _STARTED,
    State.READY: frozenset({State.SHUTTING_DOWN}),
    State.START_ERROR: frozenset({State.SHUTTING_DOWN}),
    State.START_TIMEOUT: frozenset({State.SHUTTING_DOWN}),
    State.SHUTTING_DOWN: frozenset({State.OFF, State.SHUTDOWN_ERROR, State.SHUTDOWN_TIMEOUT}),
    State.OFF: frozenset(),
    State.SHUTDOWN_ERROR: frozenset(),
    State.SHUTDOWN_TIMEOUT: frozenset(),
}

TERMINAL = frozenset(s for s, targets in TRANSITIONS.items() if not targets)


class IllegalTransition(Exception):
    """A move the table does not allow (a caller bug, never a peer's)."""

    def __init__(self, current: State, target: State) -> None:
        super().__init__(f"lifecycle cannot go from {current.value} to {target.value}")
        self.current = current
        self.target = target


@dataclass(frozen=True)
class Transition:
    """One entry of the history: ``state`` was entered at ``at`` (Unix seconds)."""

    state: State
    at: float


class Lifecycle:
    """The current state and the history of an agent's lifecycle."""

    def __init__(self, at: float) -> None:
        self._history: list[Transition] = [Transition(State.CREATED, at)]

    @property
    def state(self) -> State:
        return self._history[-1].state

    @property
    def changed_at(self) -> float:
        return self._history[-1].at

    @property
    def history(self) -> tuple[Transition, ...]:
        return tuple(self._history)

    def can(self, target: State) -> bool:
        """Whether ``target`` is a legal next state."""
        return target in TRANSITIONS[self.state]

    def advance(self, target: State, at: float) -> Transition:
        """Enter ``target`` at time ``at``.

        Raises:
            IllegalTransition: ``target`` is not reachable from the current state.
            ValueError: ``at`` is earlier than the current state's timestamp.
        """
        if not self.can(target):
            raise IllegalTransition(self.state, target)
        if at < self.changed_at:
            raise ValueError(f"timestamp {at} is before the last transition's ({self.changed_at})")
        entry = Transition(target, at)
        self._history.append(entry)
        return entry


def startup_outcome(exit_code: int | None, timed_out: bool) -> State:
    """The state a finished startup script leads to (no script: pass ``0, False``)."""
    if timed_out:
        return State.START_TIMEOUT
    return State.READY if exit_code == 0 else State.START_ERROR


def shutdown_outcome(exit_code: int | None, timed_out: bool) -> State:
    """The state a finished shutdown script leads to."""
    if timed_out:
        return State.SHUTDOWN_TIMEOUT
    return State.OFF if exit_code == 0 else State.SHUTDOWN_ERROR
