"""Unpacking a template archive (a tar of ``.tf`` files) into a work dir.

A template archive comes from a user (``burrow templates push``), so it is
untrusted; the rules -- regular files and directories only, no escaping
paths, capped members and unpacked size, everything checked before a byte is
written, plain 0644/0755 modes -- are :mod:`sdk.archive`'s, the same ones
coderd applied on upload.  The caps here are read at each call, so a test
can lower them.
"""

from __future__ import annotations

from pathlib import Path

from sdk import archive as _archive
from sdk.archive import ArchiveError

__all__ = ["MAX_ARCHIVE_BYTES", "MAX_MEMBERS", "ArchiveError", "extract", "pack"]

MAX_ARCHIVE_BYTES = 16 * 1024 * 1024
"""Largest accepted archive, compressed or unpacked (sum of member sizes)."""

MAX_MEMBERS = 1000
"""Most members (files and directories) accepted in one archive."""


def extract(archive: bytes, dest: Path) -> list[str]:
    """Unpack ``archive`` (tar, optionally compressed) under ``dest``.

    Returns:
        The relative paths of the regular files written, in archive order.

    Raises:
        ArchiveError: not a tar archive, a member is a link, device or FIFO
            or has an unsafe path, or the archive exceeds ``MAX_MEMBERS`` /
            ``MAX_ARCHIVE_BYTES``; nothing has been written then.
    """
    limits = _archive.Limits(max_input=MAX_ARCHIVE_BYTES, max_unpacked=MAX_ARCHIVE_BYTES,
                             max_member=MAX_ARCHIVE_BYTES, max_members=MAX_MEMBERS)
    try:
        return _archive.extract(archive, dest, limits)
    except OSError as exc:
        raise ArchiveError(f"cannot unpack the template: {exc}") from exc


def pack(directory: Path) -> bytes:
    """Tar a template directory with the CLI's rules (for tests and tools).

    Raises:
        OSError: a file cannot be read.
    """
    return _archive.pack(directory)
