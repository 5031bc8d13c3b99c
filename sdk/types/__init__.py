"""The typed values of coderd's API, shared by coderd (which writes them) and
every client (which reads them); :mod:`sdk.types.wire` is how they become JSON."""

from sdk.types.agents import (
    AgentLogLine,
    AgentLogs,
    Lifecycle,
    LogsStored,
    Manifest,
    Port,
    Ports,
    RelayMap,
    RelayRegion,
    ScriptLine,
    ScriptLogs,
    Stats,
)
from sdk.types.jobs import JOB_KIND_BUILD, BuildInput, BuildResult, ProtocolError
from sdk.types.problems import ErrorBody, Validation
from sdk.types.templates import Template, TemplatePushed, TemplateVersion
from sdk.types.users import FirstUser, Message, Session, Token, TokenCreated, User
from sdk.types.wire import Wire, WireError, json_schema
from sdk.types.workspaces import (
    AgentCounts,
    Build,
    BuildLogLine,
    BuildLogs,
    Resource,
    Workspace,
    WorkspaceAgent,
)

__all__ = [
    "JOB_KIND_BUILD",
    "AgentCounts",
    "AgentLogLine",
    "AgentLogs",
    "Build",
    "BuildInput",
    "BuildLogLine",
    "BuildLogs",
    "BuildResult",
    "ErrorBody",
    "FirstUser",
    "Lifecycle",
    "LogsStored",
    "Manifest",
    "Message",
    "Port",
    "Ports",
    "ProtocolError",
    "RelayMap",
    "RelayRegion",
    "Resource",
    "ScriptLine",
    "ScriptLogs",
    "Session",
    "Stats",
    "Template",
    "TemplatePushed",
    "TemplateVersion",
    "Token",
    "TokenCreated",
    "User",
    "Validation",
    "Wire",
    "WireError",
    "Workspace",
    "WorkspaceAgent",
    "json_schema",
]
