"""sdk.archive: one packer, one reader; hostile archives end in ArchiveError
with bounded memory (decompression is streamed and capped, never done whole)."""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from sdk import archive
from sdk.archive import ArchiveError, Limits

MiB = 1024 * 1024


def tar_of(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_stream(header: bytes, zeros: int) -> bytes:
    """A gzip of ``header`` followed by ``zeros`` NUL bytes, compressed as it goes."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as gz:
        gz.write(header)
        chunk = b"\0" * MiB
        for _ in range(zeros // MiB):
            gz.write(chunk)
    return buf.getvalue()


def pax_bomb(size: int) -> bytes:
    """A PAX extended header claiming ``size`` bytes: tarfile reads it whole."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = size
    return gzip_stream(info.tobuf(format=tarfile.USTAR_FORMAT), size)


def test_pack_skips_state_vcs_and_links(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in (".terraform", ".git", "files"):
        (src / d).mkdir(parents=True)
    (src / ".terraform" / "junk").write_text("x")
    (src / ".git" / "HEAD").write_text("x")
    (src / "main.tf").write_text("a")
    (src / "files" / ".bashrc").write_text("b")  # a template may ship dotfiles
    for skipped in ("terraform.tfstate", "terraform.tfstate.backup", "x.tfstate",
                    ".terraform.lock.hcl"):
        (src / skipped).write_text("{}")
    (src / "link.tf").symlink_to(src / "main.tf")
    assert archive.files_to_pack(src) == ["files/.bashrc", "main.tf"]
    data = archive.pack(src)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == ["files/.bashrc", "main.tf"]
    assert all(i.uid == 0 and i.uname == "" for i in infos)
    out = tmp_path / "out"
    assert archive.extract(data, out) == ["files/.bashrc", "main.tf"]
    assert (out / "main.tf").read_text() == "a"


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_compressions_round_trip(tmp_path: Path, mode: str) -> None:
    data = tar_of({"main.tf": b"x", "sub/a.tf": b"yy"}, mode)
    assert archive.list_files(data) == ["main.tf", "sub/a.tf"]
    assert archive.extract(data, tmp_path / "d") == ["main.tf", "sub/a.tf"]
    assert (tmp_path / "d" / "sub" / "a.tf").read_bytes() == b"yy"
    assert (tmp_path / "d" / "sub").stat().st_mode & 0o7777 == 0o755


def test_modes_are_plain_and_dot_entry_leaves_dest_alone(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dot = tarfile.TarInfo(".")
        dot.type = tarfile.DIRTYPE
        dot.mode = 0o777
        tar.addfile(dot)
        info = tarfile.TarInfo("./run.sh")
        info.size, info.mode = 2, 0o6777
        tar.addfile(info, io.BytesIO(b"hi"))
    dest = tmp_path / "d"
    dest.mkdir(mode=0o700)
    assert archive.extract(buf.getvalue(), dest) == ["run.sh"]
    assert (dest / "run.sh").stat().st_mode & 0o7777 == 0o644
    assert dest.stat().st_mode & 0o7777 == 0o700


@pytest.mark.parametrize(("name", "kind", "message"), [
    ("/etc/passwd", tarfile.REGTYPE, "absolute path"),
    ("a/../../x", tarfile.REGTYPE, "escapes"),
    ("a\\b", tarfile.REGTYPE, "bad character"),
    ("l", tarfile.SYMTYPE, "links are not allowed"),
    ("h", tarfile.LNKTYPE, "links are not allowed"),
    ("f", tarfile.FIFOTYPE, "only files and directories"),
])
def test_bad_members_refused_before_writing(tmp_path: Path, name: str, kind: bytes,
                                            message: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ok = tarfile.TarInfo("ok.tf")
        tar.addfile(ok, io.BytesIO(b""))
        bad = tarfile.TarInfo(name)
        bad.type = kind
        bad.linkname = "/etc/passwd"
        tar.addfile(bad, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    with pytest.raises(ArchiveError, match=message):
        archive.list_files(buf.getvalue())
    with pytest.raises(ArchiveError, match=message):
        archive.extract(buf.getvalue(), tmp_path / "d")
    assert not (tmp_path / "d" / "ok.tf").exists()


def test_caps_on_input_members_member_size_and_total() -> None:
    data = tar_of({"a.tf": b"x" * 3000, "b.tf": b"x" * 3000, "c.tf": b""})
    with pytest.raises(ArchiveError, match="archive is larger than 100 bytes"):
        archive.list_files(data, Limits(max_input=100))
    with pytest.raises(ArchiveError, match="more than 2 members"):
        archive.list_files(data, Limits(max_members=2))
    with pytest.raises(ArchiveError, match="larger than 2000 bytes"):
        archive.list_files(data, Limits(max_member=2000))
    with pytest.raises(ArchiveError, match="unpacks to more than 5000 bytes"):
        archive.list_files(data, Limits(max_unpacked=5000))
    assert archive.list_files(data, Limits(max_unpacked=6000)) == ["a.tf", "b.tf", "c.tf"]


@pytest.mark.parametrize("data", [b"", b"not a tar at all" * 100, b"\x1f\x8bgarbage",
                                  b"BZhgarbage", b"\xfd7zXZ\x00garbage",
                                  gzip.compress(b"\x01" * 4096)])
def test_garbage_is_archive_error(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(ArchiveError):
        archive.list_files(data)
    with pytest.raises(ArchiveError):
        archive.extract(data, tmp_path / "d")


def test_truncated_gzip_is_archive_error() -> None:
    data = tar_of({"main.tf": b"x" * 100_000}, "w:gz")
    with pytest.raises(ArchiveError):
        archive.list_files(data[: len(data) // 2])


def _peak(fn: object, *args: object) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    try:
        try:
            fn(*args)  # type: ignore[operator]
        except BaseException as exc:
            return exc, tracemalloc.get_traced_memory()[1]
        return None, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def file_bomb(size: int) -> bytes:
    """One regular member of ``size`` zero bytes."""
    info = tarfile.TarInfo("big.tf")
    info.size = size
    return gzip_stream(info.tobuf(format=tarfile.USTAR_FORMAT), size)


@pytest.mark.parametrize("make", [pax_bomb, file_bomb])
def test_gzip_bomb_refused_with_bounded_memory(tmp_path: Path, make: object) -> None:
    # ~256 MiB of zeros behind one header, a few hundred KiB compressed: the
    # issue-11 shape.  The default caps (16 MiB + framing) must stop it having
    # decompressed little more than the cap, and hold no more than that.
    bomb = make(256 * MiB)  # type: ignore[operator]
    assert len(bomb) < 400 * 1024
    for fn, args in ((archive.list_files, (bomb,)), (archive.extract, (bomb, tmp_path / "d"))):
        exc, peak = _peak(fn, *args)
        assert isinstance(exc, ArchiveError), exc
        assert "more than" in str(exc) or "larger than" in str(exc)
        assert peak < 4 * archive.DEFAULT_LIMITS.max_stream, f"peak {peak / MiB:.1f} MiB"
    assert not any((tmp_path / "d").glob("*")) if (tmp_path / "d").exists() else True


def test_pax_bomb_stops_at_a_small_cap() -> None:
    # Memory follows the cap (a small multiple of it: zlib's output and one
    # copy), not the 64 MiB the header claims.
    limits = Limits(max_unpacked=1 * MiB, max_members=10)
    exc, peak = _peak(archive.list_files, pax_bomb(64 * MiB), limits)
    assert isinstance(exc, ArchiveError)
    assert f"unpacks to more than {limits.max_stream} bytes" in str(exc)
    assert peak < 4 * limits.max_stream, f"peak {peak / MiB:.1f} MiB"
