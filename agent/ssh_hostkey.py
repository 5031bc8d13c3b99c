"""The agent's persistent SSH host key.

One of the agent's SSH adapter modules (``agent/ssh_*.py``), the only modules
of the agent that touch asyncio (this one only through asyncssh's key API).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import asyncssh


class HostKeyError(Exception):
    """The persisted host key exists but cannot be used."""


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """Read the Ed25519 host key at ``path``, generating it (mode 0600) if absent.

    The key is written to a temporary file in the same directory and renamed
    into place, so a crash never leaves a half-written key.

    Raises:
        HostKeyError: the file exists but is not a readable private key.
        OSError: the directory is not writable.
    """
    if path.exists():
        try:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)  # a host key others can read is a leaked key
            return asyncssh.read_private_key(str(path))
        except (OSError, ValueError, asyncssh.KeyImportError) as exc:
            raise HostKeyError(f"cannot use SSH host key {path}: {exc}") from exc
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return key

