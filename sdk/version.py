"""burrow's version, from one source: the installed distribution's metadata.

``pyproject.toml``'s ``project.version`` is the only place the number is
written; an install (wheel or editable) records it as the metadata of the
``burrow-workspaces`` distribution, which :data:`VERSION` reads.  A source
checkout run without installing (``PYTHONPATH=.``) has no metadata: it reads
the number straight from ``pyproject.toml`` next to the packages and marks it
``+source``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import tomllib
from pathlib import Path

DISTRIBUTION = "burrow-workspaces"


def _version() -> str:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(DISTRIBUTION)
    try:
        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
            return f"{tomllib.load(f)['project']['version']}+source"
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return "0+unknown"


VERSION: str = _version()
