"""Templates and their versions on the wire (``/api/v2/templates...``)."""

from __future__ import annotations

from dataclasses import dataclass

from sdk.types.wire import Wire


@dataclass(frozen=True)
class Template(Wire):
    """A template; ``active_version_id`` is what new workspaces start from."""

    id: str
    name: str
    description: str
    active_version_id: str | None
    created_by: str
    created_at: float


@dataclass(frozen=True)
class TemplateVersion(Wire):
    """One pushed version of a template (a tar of Terraform files)."""

    id: str
    template_id: str
    name: str
    archive_size: int
    archive_sha256: str
    tags: dict[str, str]
    created_by: str
    created_at: float


@dataclass(frozen=True)
class TemplatePushed(Wire):
    """The answer to a push: the template, its new active version, the files."""

    template: Template
    version: TemplateVersion
    files: list[str]
