"""Provisioner jobs on the wire: what coderd asks a daemon to build, and what it answers.

coderd writes a :class:`BuildInput` as a job's input (``coderd.builds``);
the daemon reads it back with :meth:`BuildInput.from_json`
(``provisionerd.daemon``) and completes the job with a :class:`BuildResult`,
which coderd reads in turn.  One type per direction, so neither side writes
the shape by hand.  Both are exact contracts between our own processes:
unknown keys are refused, and every problem is a :class:`ProtocolError` (the
provisioner protocol's error, which ``provisionerd.protocol`` re-exports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from sdk.types.wire import Wire, WireError

JOB_KIND_BUILD = "workspace_build"
TRANSITIONS = ("start", "stop", "delete")
CLOSE_PROTOCOL_ERROR = 1002

Transition = Literal["start", "stop", "delete"]


class ProtocolError(Exception):
    """The peer sent something that is not a valid message (or job input/result).

    Attributes:
        close_code: the WebSocket close code to close the connection with.
    """

    def __init__(self, message: str, close_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.close_code = close_code


@dataclass(frozen=True)
class BuildInput(Wire):
    """What coderd puts in a ``workspace_build`` job's input (bytes are base64).

    ``build_id`` is filled in by the store when the build is created.
    """

    UNKNOWN_KEYS: ClassVar[Literal["ignore", "refuse"]] = "refuse"
    WHAT: ClassVar[str] = "build input"

    template: bytes
    transition: Transition
    workspace_name: str
    workspace_owner: str
    agent_token: str
    access_url: str
    state: bytes | None = None
    variables: dict[str, str] = field(default_factory=dict)
    workspace_id: str = ""
    build_id: str = ""

    def __repr__(self) -> str:  # never print the token
        return (f"BuildInput(workspace={self.workspace_owner}/{self.workspace_name}, "
                f"transition={self.transition}, build_id={self.build_id!r})")

    @classmethod
    def from_json(cls, obj: object) -> BuildInput:
        """Validate a job input object.

        Raises:
            ProtocolError: a field is missing, mistyped or unknown.
        """
        try:
            return super().from_json(obj)
        except WireError as exc:
            raise ProtocolError(f"build input {exc}" if exc.field else str(exc)) from None


@dataclass(frozen=True)
class BuildResult(Wire):
    """What the daemon puts in ``Complete.result`` for a workspace build.

    ``resources``: ``[{address, type, name, kind: computational|peripheral,
    lifetime: ephemeral|persistent}]``; ``agents``: ``[{name, resource, ...}]``
    from the template's ``burrow_agents`` output.  A failed build may send a
    result with only ``state`` (what terraform left behind) beside its error.
    """

    UNKNOWN_KEYS: ClassVar[Literal["ignore", "refuse"]] = "refuse"
    WHAT: ClassVar[str] = "build result"

    state: bytes | None = None
    resources: list[dict[str, Any]] = field(default_factory=list)
    agents: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, obj: object) -> BuildResult:
        """Validate a build result object.

        Raises:
            ProtocolError: a field is missing, mistyped or unknown.
        """
        try:
            return super().from_json(obj)
        except WireError as exc:
            raise ProtocolError(f"build result {exc}" if exc.field else str(exc)) from None
