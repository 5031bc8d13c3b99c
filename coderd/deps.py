"""What every part of coderd is handed: the store, the pubsub and the settings."""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass, field

from coderd.metrics import CoderdMetrics
from coderd.pubsub import Pubsub
from coderd.store.base import Store

log = logging.getLogger("burrow.coderd")


@dataclass
class Coderd:
    """One coderd replica's shared objects.

    Attributes:
        store: the database.
        pubsub: hints between tasks and replicas (``coderd.pubsub``).
        access_url: the URL workspaces and clients reach this server at.
        job_tags: tags put on every workspace build job (daemons must have them).
        relay_regions: the relay map's regions (the embedded primary first).
    """

    store: Store
    pubsub: Pubsub
    access_url: str
    job_tags: dict[str, str] = field(default_factory=dict)
    relay_regions: list[dict[str, object]] = field(default_factory=list)
    metrics: CoderdMetrics = field(default_factory=CoderdMetrics)

    @property
    def secure_cookies(self) -> bool:
        return self.access_url.startswith("https://")


_current: contextvars.ContextVar[Coderd] = contextvars.ContextVar("burrow_coderd")


def use(cd: Coderd) -> None:
    """Make ``cd`` the current coderd for this task and the tasks it starts later."""
    _current.set(cd)


def current() -> Coderd:
    """The coderd set by :func:`use` in this task or a parent.

    Raises:
        LookupError: none was set.
    """
    return _current.get()
