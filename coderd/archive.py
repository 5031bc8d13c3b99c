"""Checks on an uploaded template archive before it is stored.

The tar rules (member types, paths, caps, streamed decompression) are
:mod:`sdk.archive`'s, shared with the CLI that packs and the provisioner that
unpacks; this module adds the one template rule coderd enforces on upload:
at least one ``.tf`` file.
"""

from __future__ import annotations

from sdk.archive import ArchiveError, Limits, list_files

__all__ = ["MAX_MEMBERS", "MAX_UNPACKED", "MAX_UPLOAD", "ArchiveError", "check_template_archive"]

MAX_UPLOAD = 16 * 1024 * 1024
MAX_UNPACKED = 16 * 1024 * 1024
MAX_MEMBERS = 1000


def check_template_archive(data: bytes) -> list[str]:
    """Validate ``data``; returns the member file names.

    Raises:
        ArchiveError: not a tar, too big, too many members, an unsafe path or
            member type, or no ``.tf`` file.
    """
    limits = Limits(max_input=MAX_UPLOAD, max_unpacked=MAX_UNPACKED,
                    max_member=MAX_UNPACKED, max_members=MAX_MEMBERS)
    files = list_files(data, limits)
    if not any(f.endswith(".tf") for f in files):
        raise ArchiveError("the template has no .tf file")
    return files
