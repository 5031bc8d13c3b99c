"""Template archive extraction refuses everything that could escape the work dir."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from provisionerd import archive


def make_tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o4777  # setuid + world-writable: must not survive extraction
    return info, data


def test_extracts_files_and_dirs_with_plain_modes(tmp_path: Path) -> None:
    d = tarfile.TarInfo("sub")
    d.type = tarfile.DIRTYPE
    data = make_tar(file_member("main.tf", b"# hi\n"), (d, None), file_member("sub/x.tf", b"x"))
    written = archive.extract(data, tmp_path)
    assert written == ["main.tf", "sub/x.tf"]
    assert (tmp_path / "main.tf").read_bytes() == b"# hi\n"
    assert (tmp_path / "sub" / "x.tf").read_bytes() == b"x"
    assert (tmp_path / "main.tf").stat().st_mode & 0o7777 == 0o644


def test_gzip_archive(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info, data = file_member("a.tf", b"abc")
        tar.addfile(info, io.BytesIO(data))
    assert archive.extract(buf.getvalue(), tmp_path) == ["a.tf"]


@pytest.mark.parametrize("name", ["/etc/passwd", "../x.tf", "a/../../x.tf", "a/..", "a\\..\\b"])
def test_refuses_escaping_paths(tmp_path: Path, name: str) -> None:
    with pytest.raises(archive.ArchiveError):
        archive.extract(make_tar(file_member(name, b"x")), tmp_path / "dest")
    assert not (tmp_path / "x.tf").exists()


@pytest.mark.parametrize(
    "kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE]
)
def test_refuses_links_and_specials(tmp_path: Path, kind: bytes) -> None:
    info = tarfile.TarInfo("evil")
    info.type = kind
    info.linkname = "/etc/passwd"
    data = make_tar(file_member("ok.tf", b"x"), (info, None))
    with pytest.raises(archive.ArchiveError):
        archive.extract(data, tmp_path)
    # Checked before anything is written.
    assert not (tmp_path / "ok.tf").exists()


def test_size_cap_counts_unpacked_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A small gzip that unpacks past the cap (a "tar bomb") is refused before writing.
    monkeypatch.setattr(archive, "MAX_ARCHIVE_BYTES", 50_000)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("a.tf", "b.tf"):
            info, data = file_member(name, b"x" * 30_000)
            tar.addfile(info, io.BytesIO(data))
    assert len(buf.getvalue()) < 50_000
    with pytest.raises(archive.ArchiveError, match="unpacks to more than"):
        archive.extract(buf.getvalue(), tmp_path)
    assert not (tmp_path / "a.tf").exists()


def test_size_cap_on_archive_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_ARCHIVE_BYTES", 100)
    with pytest.raises(archive.ArchiveError, match="larger than"):
        archive.extract(make_tar(file_member("a.tf", b"x")), tmp_path)


def test_member_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "MAX_MEMBERS", 2)
    data = make_tar(*(file_member(f"{i}.tf", b"x") for i in range(3)))
    with pytest.raises(archive.ArchiveError, match="members"):
        archive.extract(data, tmp_path)


@pytest.mark.parametrize("data", [b"", b"not a tar at all" * 100, b"\x1f\x8b\x08garbage"])
def test_garbage_is_archive_error(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(archive.ArchiveError):
        archive.extract(data, tmp_path)


def test_pack_round_trip_skips_hidden_and_state(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / ".terraform").mkdir(parents=True)
    (src / ".terraform" / "junk").write_text("x")
    (src / "main.tf").write_text("a")
    (src / "terraform.tfstate").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    assert archive.extract(archive.pack(src), out) == ["main.tf"]
