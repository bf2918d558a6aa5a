"""read_members: the same members, names, offsets and data as tarfile, for every tar flavour."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from worker.classify.tarstream import read_members

LONG = "a-folder-with-a-rather-long-name/" * 4 + "picture-with-a-long-name.jpg"


def archive(fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:

        def add(name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE or kind == tarfile.LNKTYPE:
                info.linkname = "REAL/a.jpg"
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        add("REAL", kind=tarfile.DIRTYPE)
        add("REAL/a.jpg", b"\xff\xd8 first" * 50)
        add("REAL/empty.jpg", b"")
        add(LONG, b"long name" * 7)
        add("FAKE/ünïcode b (1).jpg", b"x" * 513)
        add("REAL/link.jpg", kind=tarfile.SYMTYPE)
        add("REAL/hard.jpg", kind=tarfile.LNKTYPE)
        add("REAL/fifo", kind=tarfile.FIFOTYPE)
        add("REAL/last.png", b"\x89PNG" * 300)
    return out.getvalue()


def with_tarfile(data: bytes) -> list[tuple[str, int, bool, int, int, bytes]]:
    found = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
        for info in tar:
            reader = tar.extractfile(info) if info.isreg() else None
            content = reader.read() if reader else b""
            end = info.offset_data + -(-info.size // 512) * 512 if info.isreg() else None
            found.append((info.name, info.size if info.isreg() else 0, info.isreg(),
                          info.offset, end or info.offset_data, content))  # fmt: skip
    return found


def with_reader(data: bytes) -> list[tuple[str, int, bool, int, int, bytes]]:
    return [
        (m.name, m.size, m.regular, m.offset, m.end, reader.read())
        for m, reader in read_members(io.BytesIO(data))
    ]


@pytest.mark.parametrize(
    "fmt",
    [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
    ids=["ustar", "gnu", "pax"],
)
def test_every_format_reads_as_tarfile_reads_it(fmt: int) -> None:
    data = archive(fmt)
    assert with_reader(data) == with_tarfile(data)


def test_a_slice_between_member_boundaries_reads_alone() -> None:
    data = archive(tarfile.PAX_FORMAT)
    members = with_reader(data)
    start, end = members[3][3], members[4][4]  # the long name through the unicode one
    assert [m[0] for m in with_reader(data[start:end])] == [LONG, "FAKE/ünïcode b (1).jpg"]


def test_compressed_archives_are_read_through_tarfile_unless_refused() -> None:
    data = gzip.compress(archive(tarfile.GNU_FORMAT))
    assert [m[0] for m in with_reader(data)] == [m[0] for m in with_tarfile(data)]
    with pytest.raises(tarfile.ReadError):
        list(read_members(io.BytesIO(data), compressed=False))


@pytest.mark.parametrize(
    ("data", "why"),
    [(b"", "empty"), (b"not a tar at all" * 40, "bad first header"), (b"\0" * 100, "truncated")],
)
def test_what_is_not_a_tar_is_a_read_error(data: bytes, why: str) -> None:
    with pytest.raises(tarfile.TarError):
        list(read_members(io.BytesIO(data)))


def test_data_cut_off_inside_a_member_is_a_read_error() -> None:
    data = archive(tarfile.USTAR_FORMAT)
    cut = with_reader(data)[1][3] + 512 + 100  # inside REAL/a.jpg's data
    members = read_members(io.BytesIO(data[:cut]))
    with pytest.raises(tarfile.ReadError):
        [reader.read() for _, reader in members]
