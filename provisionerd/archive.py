"""Safe extraction of a template archive (a tar of ``.tf`` files) into a work dir.

A template archive comes from a user (``burrow templates push``), so it is
untrusted: every member is checked before a single byte is written.  Only
regular files and directories are accepted; absolute paths, ``..`` components,
symbolic and hard links, devices and FIFOs are refused, and the archive is
capped in member count and total unpacked size.  ``tarfile.extractall`` is not
used: files are written by hand with plain modes (0644 / 0755), so nothing in
the archive controls ownership, permissions or where a file lands.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

MAX_ARCHIVE_BYTES = 16 * 1024 * 1024
"""Largest accepted unpacked size (sum of member sizes)."""

MAX_MEMBERS = 1000
"""Most members (files and directories) accepted in one archive."""


class ArchiveError(Exception):
    """The template archive is malformed or breaks a safety rule."""


def _member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")):
        raise ArchiveError(f"absolute path in template archive: {name!r}")
    if any(part == ".." for part in path.parts):
        raise ArchiveError(f"path escapes the template directory: {name!r}")
    if "\x00" in name or "\\" in name:
        raise ArchiveError(f"bad character in template archive path: {name!r}")
    return path


def extract(archive: bytes, dest: Path) -> list[str]:
    """Unpack ``archive`` (tar, optionally gzip-compressed) under ``dest``.

    Args:
        archive: the tar bytes.
        dest: an existing directory to unpack into.

    Returns:
        The relative paths of the regular files written, in archive order.

    Raises:
        ArchiveError: the bytes are not a tar archive, or a member is a link,
            device or FIFO, has an absolute path or a ``..`` component, or the
            archive exceeds ``MAX_MEMBERS`` / ``MAX_ARCHIVE_BYTES``.
    """
    if len(archive) > MAX_ARCHIVE_BYTES:
        raise ArchiveError(f"template archive is larger than {MAX_ARCHIVE_BYTES} bytes")
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            members = tar.getmembers()
            _check(members)
            written: list[str] = []
            for member in members:
                path = _member_path(member.name)
                if path.parts in ((), (".",)):
                    continue
                target = dest.joinpath(*path.parts)
                if member.isdir():
                    target.mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - regular files always have data
                    raise ArchiveError(f"unreadable member {member.name!r}")
                with source, open(target, "wb") as out:
                    out.write(source.read(member.size))
                target.chmod(0o644)
                written.append(str(path))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(f"bad template archive: {exc}") from exc
    return written


def _check(members: list[tarfile.TarInfo]) -> None:
    if len(members) > MAX_MEMBERS:
        raise ArchiveError(f"template archive has more than {MAX_MEMBERS} members")
    total = 0
    for member in members:
        _member_path(member.name)
        if member.issym() or member.islnk():
            raise ArchiveError(f"links are not allowed in a template archive: {member.name!r}")
        if not (member.isfile() or member.isdir()):
            raise ArchiveError(f"only files and directories are allowed: {member.name!r}")
        total += member.size
        if total > MAX_ARCHIVE_BYTES:
            raise ArchiveError(f"template archive unpacks to more than {MAX_ARCHIVE_BYTES} bytes")


def pack(directory: Path) -> bytes:
    """Tar the regular files under ``directory`` (for tests and tools).

    Hidden entries (``.terraform``, state files) are skipped.

    Raises:
        OSError: a file cannot be read.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory)
            if any(part.startswith(".") for part in rel.parts) or path.is_symlink():
                continue
            if rel.name.endswith((".tfstate", ".tfstate.backup")):
                continue
            if path.is_file():
                tar.add(path, arcname=rel.as_posix(), recursive=False)
    return buf.getvalue()
