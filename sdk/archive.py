"""Template archives: one set of rules for packing and for unpacking a tar.

A template is a tar (optionally gzip-, bzip2- or xz-compressed) of
Terraform files.  The CLI packs it (``burrow templates push``, ``burrow
up``), coderd checks it on upload, provisionerd unpacks it into a work dir;
all three use this module so they agree on what an archive may hold.

Packing (:func:`pack`) takes the regular files under a directory, skipping
``SKIP_DIRS`` (Terraform's and VCS working state), ``SKIP_FILES`` and state
files (``*.tfstate``, ``*.tfstate.backup``), and symbolic links.  Owner and
group are cleared so the archive does not leak the packer's user names.

Reading (:func:`list_files`, :func:`extract`) treats the bytes as hostile:

- the compressed input is capped (``Limits.max_input``);
- decompression is *streamed* through a reader that counts every byte it
  hands to :mod:`tarfile` and refuses to go past ``Limits.max_unpacked``
  plus the tar framing allowance.  This matters because ``tarfile`` reads
  some members whole before a caller sees them (a PAX or GNU long-name
  header of any size): without the counting reader a 254 KiB gzip of one
  such header makes it allocate hundreds of MiB;
- members are capped in count, each member in size, and the sum of member
  sizes;
- only regular files and directories are accepted: no absolute paths, no
  ``..``, no backslashes or NULs, no links, devices or FIFOs; and
  ``tarfile.data_filter`` runs on every member as a second opinion;
- :func:`extract` checks every member before writing a byte, then unpacks
  with the stdlib's ``extractall`` under the ``data`` filter, with modes
  normalised to 0644 (files) and 0755 (directories).

Every refusal is an :class:`ArchiveError` whose message says which rule.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, cast

MiB = 1024 * 1024

SKIP_DIRS = frozenset({".terraform", ".git", ".hg", ".svn"})
"""Directories never packed: Terraform's working dir and version control."""

SKIP_FILES = frozenset({".terraform.lock.hcl", ".terraform.tfstate.lock.info"})
"""Files never packed (besides ``*.tfstate`` / ``*.tfstate.backup``)."""

STATE_SUFFIXES = (".tfstate", ".tfstate.backup")

FRAMING_PER_MEMBER = 2048
"""Tar bytes a member may take beyond its data: its header block, padding,
and a PAX or GNU long-name header for a long path."""


@dataclass(frozen=True)
class Limits:
    """Caps on an archive read from outside.

    Attributes:
        max_input: bytes as received (compressed).
        max_unpacked: sum of the members' sizes.
        max_member: one member's size.
        max_members: number of members (files and directories).
    """

    max_input: int = 16 * MiB
    max_unpacked: int = 16 * MiB
    max_member: int = 16 * MiB
    max_members: int = 1000

    @property
    def max_stream(self) -> int:
        """The most decompressed tar bytes read before giving up."""
        return self.max_unpacked + (self.max_members + 2) * FRAMING_PER_MEMBER


DEFAULT_LIMITS = Limits()


class ArchiveError(Exception):
    """The archive is malformed or breaks a safety rule (the message says which)."""


# -- packing -----------------------------------------------------------------


def files_to_pack(directory: Path) -> list[str]:
    """The relative POSIX paths :func:`pack` would include, sorted.

    Raises:
        OSError: the directory cannot be listed.
    """
    found: list[str] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS
                         and not os.path.islink(os.path.join(root, d)))
        for name in sorted(files):
            path = os.path.join(root, name)
            if (name in SKIP_FILES or name.endswith(STATE_SUFFIXES)
                    or os.path.islink(path) or not os.path.isfile(path)):
                continue
            found.append(Path(os.path.relpath(path, directory)).as_posix())
    return sorted(found)


def pack(directory: Path) -> bytes:
    """An uncompressed tar of :func:`files_to_pack` under ``directory``.

    Raises:
        OSError: a file cannot be read.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in files_to_pack(directory):
            path = directory / rel
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


# -- reading -----------------------------------------------------------------


class _CappedReader:
    """A read-only, seekable view of a decompressing file that stops at ``cap``.

    ``tarfile`` reads and seeks through it; any read or seek that would take
    the position past ``cap`` raises ``ArchiveError`` instead, so no more than
    ``cap`` bytes are ever decompressed (a seek forward in a compressed file
    decompresses what it skips) and no single read allocates more than that.
    """

    def __init__(self, inner: IO[bytes], cap: int) -> None:
        self._inner = inner
        self._cap = cap
        self._pos = 0

    def _over(self) -> ArchiveError:
        return ArchiveError(f"archive unpacks to more than {self._cap} bytes")

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise OSError("only absolute and relative seeks are supported")
        if offset > self._cap:
            raise self._over()
        self._pos = self._inner.seek(offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        room = self._cap - self._pos
        want = room if size is None or size < 0 else min(size, room)
        data = self._inner.read(want)
        self._pos += len(data)
        if (size is None or size < 0 or size > want) and len(data) == want \
                and self._inner.read(1):
            raise self._over()
        return data


def _decompressed(data: bytes) -> IO[bytes]:
    raw = io.BytesIO(data)
    if data[:2] == b"\x1f\x8b":
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if data[:3] == b"BZh":
        return bz2.BZ2File(raw, mode="rb")
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw, mode="rb")
    return raw


_BAD_TAR = (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError)


def _member_path(name: str) -> PurePosixPath:
    short = name[:200]
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute():
        raise ArchiveError(f"absolute path in archive: {short!r}")
    if ".." in path.parts:
        raise ArchiveError(f"path escapes the template directory: {short!r}")
    if "\\" in name or "\x00" in name:
        raise ArchiveError(f"bad character in archive path: {short!r}")
    return path


def _checked_members(tar: tarfile.TarFile, limits: Limits) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in tar:
        if len(members) >= limits.max_members:
            raise ArchiveError(f"archive has more than {limits.max_members} members")
        name = member.name
        _member_path(name)
        if member.issym() or member.islnk():
            raise ArchiveError(f"links are not allowed in templates: {name[:200]!r}")
        if not (member.isfile() or member.isdir()):
            raise ArchiveError(f"only files and directories are allowed: {name[:200]!r}")
        if member.size > limits.max_member:
            raise ArchiveError(
                f"archive member {name[:200]!r} is larger than {limits.max_member} bytes")
        total += member.size
        if total > limits.max_unpacked:
            raise ArchiveError(f"archive unpacks to more than {limits.max_unpacked} bytes")
        try:
            tarfile.data_filter(member, "/nonexistent-burrow-template")
        except tarfile.FilterError as exc:
            raise ArchiveError(f"unsafe archive member: {exc}") from None
        members.append(member)
    return members


def _file_names(members: list[tarfile.TarInfo]) -> list[str]:
    return [str(PurePosixPath(m.name)) for m in members if m.isfile()]


def _open(data: bytes, limits: Limits) -> tuple[tarfile.TarFile, IO[bytes]]:
    if len(data) > limits.max_input:
        raise ArchiveError(f"archive is larger than {limits.max_input} bytes")
    inner = _decompressed(data)
    reader = _CappedReader(inner, limits.max_stream)
    return tarfile.open(fileobj=cast(IO[bytes], reader), mode="r:"), inner


def list_files(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Check every member of ``data``; the regular files' paths, in archive order.

    Raises:
        ArchiveError: not a tar, over a limit, or a member breaks a rule.
    """
    try:
        tar, inner = _open(data, limits)
        with inner, tar:
            return _file_names(_checked_members(tar, limits))
    except _BAD_TAR as exc:
        raise ArchiveError(f"not a valid tar archive: {exc}") from None


def _plain_modes(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    # The data filter already refuses what escapes ``dest``; on top of it,
    # nothing in the archive decides permissions.
    checked = tarfile.data_filter(member, dest)
    return checked.replace(mode=0o755 if checked.isdir() else 0o644, deep=False)


def extract(data: bytes, dest: Path, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Check every member of ``data``, then unpack it under ``dest``.

    Args:
        data: the archive bytes.
        dest: the directory to unpack into (created if missing).
        limits: the caps to enforce.

    Returns:
        The regular files' relative paths, in archive order.

    Raises:
        ArchiveError: not a tar, over a limit, or a member breaks a rule;
            nothing has been written then.
        OSError: ``dest`` cannot be written.
    """
    try:
        tar, inner = _open(data, limits)
        with inner, tar:
            members = _checked_members(tar, limits)
            dest.mkdir(parents=True, exist_ok=True)
            # "." would re-mode ``dest`` itself.
            wanted = [m for m in members if PurePosixPath(m.name).parts not in ((), (".",))]
            tar.extractall(dest, members=wanted, filter=_plain_modes)  # noqa: S202 - checked
    except tarfile.FilterError as exc:
        raise ArchiveError(f"unsafe archive member: {exc}") from None
    except _BAD_TAR as exc:
        if isinstance(exc, OSError) and exc.filename is not None:
            raise  # dest itself is the problem, not the archive
        raise ArchiveError(f"not a valid tar archive: {exc}") from None
    return _file_names(members)
