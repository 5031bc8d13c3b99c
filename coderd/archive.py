"""Checks on an uploaded template archive before it is stored.

A template is a tar (optionally gzip-compressed) of ``.tf`` files.  It comes
from a user, so every member is checked: regular files and directories only
(no symbolic or hard links, devices or FIFOs -- the provisioner refuses them
too), no absolute paths, no ``..`` components, no backslashes or NULs, capped
in member count and unpacked size (a gzip bomb stops at the cap), and at
least one ``.tf`` file.  ``tarfile.data_filter`` runs on each member as a
second opinion.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import PurePosixPath

MAX_UPLOAD = 16 * 1024 * 1024
MAX_UNPACKED = 16 * 1024 * 1024
MAX_MEMBERS = 1000


class ArchiveError(Exception):
    """The archive is malformed or breaks a safety rule (message says which)."""


def check_template_archive(data: bytes) -> list[str]:
    """Validate ``data``; returns the member file names.

    Raises:
        ArchiveError: not a tar, too big, too many members, an unsafe path or
            member type, or no ``.tf`` file.
    """
    if len(data) > MAX_UPLOAD:
        raise ArchiveError(f"archive is larger than {MAX_UPLOAD} bytes")
    files: list[str] = []
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise ArchiveError(f"archive has more than {MAX_MEMBERS} members")
                name = member.name
                path = PurePosixPath(name)
                if name.startswith(("/", "\\")) or path.is_absolute():
                    raise ArchiveError(f"absolute path in archive: {name[:200]!r}")
                if ".." in path.parts:
                    raise ArchiveError(f"path escapes the template directory: {name[:200]!r}")
                if "\\" in name or "\x00" in name:
                    raise ArchiveError(f"bad character in archive path: {name[:200]!r}")
                if member.issym() or member.islnk():
                    raise ArchiveError(f"links are not allowed in templates: {name[:200]!r}")
                if not (member.isfile() or member.isdir()):
                    raise ArchiveError(f"only files and directories are allowed: {name[:200]!r}")
                try:
                    tarfile.data_filter(member, "/nonexistent-burrow-template")
                except tarfile.FilterError as exc:
                    raise ArchiveError(f"unsafe archive member: {exc}") from None
                if member.isfile():
                    total += member.size
                    if total > MAX_UNPACKED:
                        raise ArchiveError(f"archive unpacks to more than {MAX_UNPACKED} bytes")
                    files.append(str(path))
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise ArchiveError(f"not a valid tar archive: {exc}") from None
    if not any(f.endswith(".tf") for f in files):
        raise ArchiveError("the template has no .tf file")
    return files
