"""The provisioner daemon <-> coderd protocol: JSON text messages over a WebSocket.

Sans-IO: this module turns messages into text and text into validated,
frozen dataclasses.  It never imports trio and is shared by the daemon
(``provisionerd.daemon``) and the server side (``coderd.provisionerd_api``).

Endpoint: ``GET /api/v2/provisionerd`` upgraded to a WebSocket with
subprotocol ``burrow-provisioner.v1``.  The pre-shared key travels in the
upgrade request header ``Burrow-Provisioner-PSK`` (a wrong or missing key is
refused with ``401`` before the upgrade) or, for clients that cannot set
headers, in ``hello.psk``.

Conversation (one job at a time per connection; ``>`` daemon to coderd)::

    > hello {daemon_id, name, tags, psk?}
    < welcome {daemon_id}
    loop:
      > acquire {}
      < job {id, kind, input}            (long-poll: sent when a job matches)
      repeat while the job runs:
        > log {job_id, lines}            (batches, at most MAX_LOG_LINES)
        > heartbeat {job_id}
        < heartbeat_ack {job_id, cancel}
      > state_chunk {job_id, data}       (zero or more: a big state, in pieces)
      > complete {job_id, result? | error?}
      < completed {job_id}

A WebSocket server may cap message size (trio-websocket's default is
1 MiB), so the daemon keeps every message it sends small: log batches are
bounded in bytes (``MAX_LOG_BATCH``), and a state bigger than ``STATE_CHUNK``
goes ahead of ``complete`` as ``state_chunk`` pieces of its base64 text; the
``complete`` then carries ``result.state = null`` and coderd uses the joined
pieces (at most ``MAX_STATE`` characters).

``error {message}`` from coderd ends the connection.  Any text that is not a
valid message raises :class:`ProtocolError`; the receiver closes the
connection with ``ProtocolError.close_code``.

Job input for kind ``workspace_build`` is :class:`BuildInput`; the result is
:class:`BuildResult` (both JSON objects; bytes are base64).  Those two, the
:class:`ProtocolError` they raise, and the endpoint's path, header and
subprotocol live in the SDK (:mod:`sdk.types.jobs`, :mod:`sdk.provisioner`),
because coderd writes what the daemon reads; this module re-exports them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

# Re-exported (``as``): the daemon and coderd import these from here.
from sdk.provisioner import PATH as PATH
from sdk.provisioner import PSK_HEADER as PSK_HEADER
from sdk.provisioner import SUBPROTOCOL as SUBPROTOCOL
from sdk.types.jobs import CLOSE_PROTOCOL_ERROR as CLOSE_PROTOCOL_ERROR
from sdk.types.jobs import JOB_KIND_BUILD as JOB_KIND_BUILD
from sdk.types.jobs import TRANSITIONS as TRANSITIONS
from sdk.types.jobs import BuildInput as BuildInput
from sdk.types.jobs import BuildResult as BuildResult
from sdk.types.jobs import ProtocolError as ProtocolError

MAX_MESSAGE = 64 * 1024 * 1024
"""Largest message in characters (a job carries a template archive and a state)."""
MAX_LOG_LINES = 1000
"""Most lines in one ``log`` message."""
MAX_LOG_LINE = 64 * 1024
MAX_ERROR = 64 * 1024
MAX_LOG_BATCH = 256 * 1024
"""Most characters of log text the daemon puts in one ``log`` message."""
STATE_CHUNK = 256 * 1024
"""Characters of base64 state per ``state_chunk`` message."""
MAX_STATE = 64 * 1024 * 1024
"""Most characters of base64 state coderd accepts for one job."""

CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_UNAUTHORIZED = 4401

LOG_STREAMS = ("stdout", "stderr", "provisioner")


def split_state(result: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[str]]:
    """Take a big ``state`` out of a result: ``(result with state None, pieces)``.

    A state of at most ``STATE_CHUNK`` characters stays in the result (no pieces).
    """
    if result is None:
        return None, []
    state = result.get("state")
    if not isinstance(state, str) or len(state) <= STATE_CHUNK:
        return result, []
    pieces = [state[i : i + STATE_CHUNK] for i in range(0, len(state), STATE_CHUNK)]
    return {**result, "state": None}, pieces


class _Fields:
    """Typed access to one JSON object, refusing unknown keys."""

    def __init__(self, obj: object, what: str, allowed: set[str]) -> None:
        if not isinstance(obj, dict):
            raise ProtocolError(f"{what} must be a JSON object")
        unknown = set(obj) - allowed
        if unknown:
            raise ProtocolError(f"{what}: unknown field(s) {sorted(unknown)}")
        self.obj: dict[str, Any] = obj
        self.what = what

    def text(self, key: str, *, max_len: int = 4096) -> str:
        value = self.obj.get(key)
        if not isinstance(value, str):
            raise ProtocolError(f"{self.what}.{key} must be a string")
        if len(value) > max_len:
            raise ProtocolError(f"{self.what}.{key} is too long")
        return value

    def opt_text(self, key: str, *, max_len: int = 4096) -> str | None:
        if self.obj.get(key) is None:
            return None
        return self.text(key, max_len=max_len)

    def flag(self, key: str) -> bool:
        value = self.obj.get(key)
        if not isinstance(value, bool):
            raise ProtocolError(f"{self.what}.{key} must be a boolean")
        return value

    def strings(self, key: str, *, optional: bool = True) -> dict[str, str]:
        value = self.obj.get(key)
        if value is None and optional:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ProtocolError(f"{self.what}.{key} must be an object of strings")
        return dict(value)

    def mapping(self, key: str, *, optional: bool = False) -> Any:
        value = self.obj.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, dict):
            raise ProtocolError(f"{self.what}.{key} must be an object")
        return value


# ---- messages ------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Daemon -> coderd, first message."""

    TYPE: ClassVar[str] = "hello"
    daemon_id: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    psk: str | None = None

    def __repr__(self) -> str:  # never print the key
        return f"Hello(daemon_id={self.daemon_id!r}, name={self.name!r}, tags={self.tags!r})"


@dataclass(frozen=True)
class Welcome:
    """Coderd -> daemon: hello accepted."""

    TYPE: ClassVar[str] = "welcome"
    daemon_id: str


@dataclass(frozen=True)
class Acquire:
    """Daemon -> coderd: send me the next job matching my tags (long-poll)."""

    TYPE: ClassVar[str] = "acquire"


@dataclass(frozen=True)
class Job:
    """Coderd -> daemon: a job to run."""

    TYPE: ClassVar[str] = "job"
    id: str
    kind: str
    input: dict[str, Any]


@dataclass(frozen=True)
class LogLine:
    """One line of output."""

    stream: str
    line: str
    ts: str = ""

    def to_json(self) -> dict[str, str]:
        """``{stream, line, ts}`` — what coderd stores with the job."""
        return {"stream": self.stream, "line": self.line, "ts": self.ts}


@dataclass(frozen=True)
class Log:
    """Daemon -> coderd: a batch of log lines for a job."""

    TYPE: ClassVar[str] = "log"
    job_id: str
    lines: tuple[LogLine, ...]


@dataclass(frozen=True)
class Heartbeat:
    """Daemon -> coderd: the job is still running."""

    TYPE: ClassVar[str] = "heartbeat"
    job_id: str


@dataclass(frozen=True)
class HeartbeatAck:
    """Coderd -> daemon: heartbeat recorded; ``cancel`` if cancellation was requested."""

    TYPE: ClassVar[str] = "heartbeat_ack"
    job_id: str
    cancel: bool


@dataclass(frozen=True)
class StateChunk:
    """Daemon -> coderd: a piece of the base64 text of the job's final state."""

    TYPE: ClassVar[str] = "state_chunk"
    job_id: str
    data: str


@dataclass(frozen=True)
class Complete:
    """Daemon -> coderd: the job finished.  Exactly one of result / error is set,
    except that a failed job may carry ``result`` with the ``state`` it left."""

    TYPE: ClassVar[str] = "complete"
    job_id: str
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Completed:
    """Coderd -> daemon: completion recorded."""

    TYPE: ClassVar[str] = "completed"
    job_id: str


@dataclass(frozen=True)
class Error:
    """Coderd -> daemon: fatal; the connection closes after it."""

    TYPE: ClassVar[str] = "error"
    message: str


Message = (
    Hello
    | Welcome
    | Acquire
    | Job
    | Log
    | Heartbeat
    | HeartbeatAck
    | StateChunk
    | Complete
    | Completed
    | Error
)
FromDaemon = Hello | Acquire | Log | Heartbeat | StateChunk | Complete
FromCoderd = Welcome | Job | HeartbeatAck | Completed | Error


def _to_obj(msg: Message) -> dict[str, Any]:
    obj: dict[str, Any] = {"type": msg.TYPE}
    if isinstance(msg, Hello):
        obj.update(daemon_id=msg.daemon_id, name=msg.name, tags=msg.tags)
        if msg.psk is not None:
            obj["psk"] = msg.psk
    elif isinstance(msg, Log):
        obj.update(job_id=msg.job_id, lines=[ln.to_json() for ln in msg.lines])
    elif isinstance(msg, Complete):
        obj["job_id"] = msg.job_id
        if msg.result is not None:
            obj["result"] = msg.result
        if msg.error is not None:
            obj["error"] = msg.error
    elif not isinstance(msg, Acquire):
        obj.update(vars(msg))
    return obj


def encode(msg: Message) -> str:
    """The JSON text of ``msg``.

    Raises:
        ProtocolError: the message is too big or not JSON-serialisable.
    """
    try:
        text = json.dumps(_to_obj(msg), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"cannot encode {msg.TYPE}: {exc}") from exc
    if len(text) > MAX_MESSAGE:
        raise ProtocolError(f"{msg.TYPE} message too big", CLOSE_TOO_BIG)
    return text


def _parse_lines(value: object) -> tuple[LogLine, ...]:
    if not isinstance(value, list):
        raise ProtocolError("log.lines must be a list")
    if len(value) > MAX_LOG_LINES:
        raise ProtocolError(f"log.lines has more than {MAX_LOG_LINES} lines")
    out = []
    for item in value:
        f = _Fields(item, "log line", {"stream", "line", "ts"})
        stream = f.text("stream")
        if stream not in LOG_STREAMS:
            raise ProtocolError(f"log line stream must be one of {LOG_STREAMS}")
        line = f.text("line", max_len=MAX_LOG_LINE)
        out.append(LogLine(stream, line, f.opt_text("ts") or ""))
    return tuple(out)


def decode(data: str | bytes) -> Message:
    """Parse and validate one message.

    Raises:
        ProtocolError: not UTF-8, not JSON, too big, unknown ``type``,
            missing or mistyped or unknown fields.
    """
    if len(data) > MAX_MESSAGE:
        raise ProtocolError("message too big", CLOSE_TOO_BIG)
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"message is not JSON: {exc}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError("message must be a JSON object with a string 'type'")
    kind = obj["type"]
    if kind == "hello":
        f = _Fields(obj, kind, {"type", "daemon_id", "name", "tags", "psk"})
        return Hello(f.text("daemon_id", max_len=128), f.text("name", max_len=256),
                     f.strings("tags"), f.opt_text("psk"))
    if kind == "welcome":
        return Welcome(_Fields(obj, kind, {"type", "daemon_id"}).text("daemon_id"))
    if kind == "acquire":
        _Fields(obj, kind, {"type"})
        return Acquire()
    if kind == "job":
        f = _Fields(obj, kind, {"type", "id", "kind", "input"})
        return Job(f.text("id"), f.text("kind"), f.mapping("input"))
    if kind == "log":
        f = _Fields(obj, kind, {"type", "job_id", "lines"})
        return Log(f.text("job_id"), _parse_lines(obj.get("lines")))
    if kind == "heartbeat":
        return Heartbeat(_Fields(obj, kind, {"type", "job_id"}).text("job_id"))
    if kind == "heartbeat_ack":
        f = _Fields(obj, kind, {"type", "job_id", "cancel"})
        return HeartbeatAck(f.text("job_id"), f.flag("cancel"))
    if kind == "complete":
        f = _Fields(obj, kind, {"type", "job_id", "result", "error"})
        result = f.mapping("result", optional=True)
        error = f.opt_text("error", max_len=MAX_ERROR)
        if result is None and error is None:
            raise ProtocolError("complete needs a result or an error")
        return Complete(f.text("job_id"), result, error)
    if kind == "state_chunk":
        f = _Fields(obj, kind, {"type", "job_id", "data"})
        return StateChunk(f.text("job_id"), f.text("data", max_len=STATE_CHUNK))
    if kind == "completed":
        return Completed(_Fields(obj, kind, {"type", "job_id"}).text("job_id"))
    if kind == "error":
        return Error(_Fields(obj, kind, {"type", "message"}).text("message", max_len=MAX_ERROR))
    raise ProtocolError(f"unknown message type {kind!r}")
