"""Expanding inputs into lazy items: paths, job inputs, manifests and tar archives."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
import tracemalloc
from collections.abc import Iterable
from pathlib import Path

import pytest

from contracts import ErrorCode, ManifestInput, PrefixInput, TarInput, UriListInput
from tests.support.memory_store import MemoryStore
from worker.classify.inputs import (
    InputItem,
    expand_job_inputs,
    expand_paths,
    iter_manifest_rows,
    iter_tar_items,
    object_item,
    tar_member_offsets,
)
from worker.errors import (
    AccessDenied,
    ImageFailure,
    JobRejected,
    ObjectNotFound,
    ObjectTooLarge,
    RequestRejected,
    StorageError,
)
from worker.storage import Storage

MAX = 1024 * 1024


@pytest.fixture
def remote() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def storage(remote: MemoryStore) -> Storage:
    """Local files for real, ``s3://`` addresses from ``remote``."""
    return Storage(lambda: remote)


def make_tar(members: Iterable[tuple[str, bytes | None]], compression: str = "") -> bytes:
    """A tar of regular files (data) and folders (None), in the order given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def uris(items: Iterable[InputItem]) -> list[str]:
    return [item.uri for item in items]


def failure_code(item: InputItem) -> ErrorCode:
    with pytest.raises(ImageFailure) as caught:
        item.load()
    return caught.value.code


# --- loading one object ---------------------------------------------------------------------


class _Failing(MemoryStore):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def get_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        raise self.error


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ObjectNotFound("gone"), ErrorCode.NOT_FOUND),
        (AccessDenied("no"), ErrorCode.FORBIDDEN),
        (ObjectTooLarge("s3://b/k", 10, 5), ErrorCode.TOO_LARGE),
        (StorageError("SlowDown"), ErrorCode.STORAGE_UNAVAILABLE),
        (RequestRejected("InvalidBucketName"), ErrorCode.STORAGE_REJECTED),
    ],
)
def test_load_maps_storage_errors_to_image_failures(error: Exception, code: ErrorCode) -> None:
    item = object_item(Storage(lambda: _Failing(error)), "s3://b/k", MAX)
    assert failure_code(item) == code


def test_load_of_an_empty_object_fails_empty_file(storage: Storage, remote: MemoryStore) -> None:
    remote.put_bytes("s3://b/empty.jpg", b"")
    assert failure_code(object_item(storage, "s3://b/empty.jpg", MAX)) == ErrorCode.EMPTY_FILE


def test_items_read_nothing_until_loaded(storage: Storage, remote: MemoryStore) -> None:
    remote.put_bytes("s3://b/a.jpg", b"img")
    item = object_item(storage, "s3://b/a.jpg", MAX, true_label="real")
    assert remote.reads == {}
    assert (item.load(), item.true_label) == (b"img", "real")


# --- the CLI's paths -----------------------------------------------------------------------


def test_folder_yields_visible_images_recursively_in_order(
    storage: Storage, tmp_path: Path
) -> None:
    names = ["b/2.PNG", "b/1.jpg", "a.jpeg", "notes.txt", ".hidden.jpg", ".cache/x.jpg", "c.webp"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    items = list(expand_paths([str(tmp_path)], storage, MAX))
    assert uris(items) == [
        f"{tmp_path}/{name}" for name in ["a.jpeg", "b/1.jpg", "b/2.PNG", "c.webp"]
    ]
    assert all(item.true_label is None for item in items)


def test_folders_keep_the_spelling_they_were_given(
    storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    paths = [".", "sub/", f"file://{tmp_path}/sub"]
    assert uris(expand_paths(paths, storage, MAX)) == [
        "./sub/a.jpg",
        "sub/a.jpg",
        f"file://{tmp_path}/sub/a.jpg",
    ]


def test_a_named_file_is_attempted_whatever_its_extension(storage: Storage, tmp_path: Path) -> None:
    path = tmp_path / "photo.heic"
    path.write_bytes(b"data")
    [item] = expand_paths([str(path)], storage, MAX)
    assert (item.uri, item.load()) == (str(path), b"data")


def test_a_path_that_names_nothing_fails_not_found(storage: Storage, tmp_path: Path) -> None:
    [item] = expand_paths([str(tmp_path / "typo.jpg")], storage, MAX)
    assert failure_code(item) == ErrorCode.NOT_FOUND


def test_labels_from_folders(storage: Storage, tmp_path: Path) -> None:
    for name in ["Real/a.jpg", "synthetic/b.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    items = expand_paths([str(tmp_path)], storage, MAX, labels_from_folders=True)
    assert [item.true_label for item in items] == ["real", "synthetic"]


def test_local_tar_members_in_order_with_folder_labels(storage: Storage, tmp_path: Path) -> None:
    archive = tmp_path / "shard.tar"
    archive.write_bytes(
        make_tar(
            [("real", None), ("real/b.jpg", b"B"), ("Synthetic/a.jpg", b"A"), ("top.jpg", b"T")]
        )
    )
    items = list(expand_paths([str(archive)], storage, MAX, labels_from_folders=True))
    assert uris(items) == [
        f"{archive}#real/b.jpg",
        f"{archive}#Synthetic/a.jpg",
        f"{archive}#top.jpg",
    ]
    assert [item.true_label for item in items] == ["real", "synthetic", None]
    assert [item.load() for item in items] == [b"B", b"A", b"T"]


def test_compressed_tar_files_are_read(storage: Storage, tmp_path: Path) -> None:
    archive = tmp_path / "shard.tar.gz"
    archive.write_bytes(make_tar([("a.jpg", b"A")], compression="gz"))
    assert [item.load() for item in expand_paths([str(archive)], storage, MAX)] == [b"A"]


def test_s3_object_prefix_and_tar(storage: Storage, remote: MemoryStore) -> None:
    remote.objects.update(
        {
            "s3://b/one.jpg": b"1",
            "s3://b/photos/real/x.jpg": b"x",
            "s3://b/photos/real/x.json": b"{}",
            "s3://b/photos/.trash/y.jpg": b"y",
            "s3://b/photos2/z.jpg": b"z",
            "s3://b/shard.tar": make_tar([("fake/t.jpg", b"t")]),
        }
    )
    paths = ["s3://b/one.jpg", "s3://b/photos", "s3://b/shard.tar"]
    items = list(expand_paths(paths, storage, MAX, labels_from_folders=True))
    assert uris(items) == [
        "s3://b/one.jpg",
        "s3://b/photos/real/x.jpg",
        "s3://b/shard.tar#fake/t.jpg",
    ]
    assert [item.true_label for item in items] == [None, "real", "fake"]


def test_s3_path_that_names_nothing_fails_not_found(storage: Storage) -> None:
    [item] = expand_paths(["s3://b/typo"], storage, MAX)
    assert (item.uri, failure_code(item)) == ("s3://b/typo", ErrorCode.NOT_FOUND)


def test_expansion_is_lazy(storage: Storage, remote: MemoryStore) -> None:
    remote.objects.update({f"s3://b/p/{n:03}.jpg": b"x" for n in range(100)})
    items = expand_paths(["s3://b/p/"], storage, MAX)
    assert next(items).uri == "s3://b/p/000.jpg"
    assert remote.reads == {}


# --- the worker's job inputs -----------------------------------------------------------------


def test_uri_list_with_known_labels(storage: Storage) -> None:
    inputs = UriListInput(uris=["s3://bucket/a.jpg", "s3://bucket/b.jpg"])
    items = list(expand_job_inputs(inputs, storage, MAX, labels={"s3://bucket/b.jpg": "real"}))
    assert [(item.uri, item.true_label) for item in items] == [
        ("s3://bucket/a.jpg", None),
        ("s3://bucket/b.jpg", "real"),
    ]


def test_prefix_yields_every_object(storage: Storage, remote: MemoryStore) -> None:
    remote.objects.update({"s3://bucket/in/a.jpg": b"a", "s3://bucket/in/b.txt": b"b"})
    remote.objects["s3://bucket/in/sub/"] = b""  # a folder marker
    items = expand_job_inputs(PrefixInput(prefix="s3://bucket/in/"), storage, MAX)
    assert uris(items) == ["s3://bucket/in/a.jpg", "s3://bucket/in/b.txt"]


def test_tar_input_with_labels(storage: Storage, remote: MemoryStore) -> None:
    remote.objects["s3://bucket/s.tar"] = make_tar([("a.jpg", b"A"), ("b.jpg", b"B")])
    labels = {"s3://bucket/s.tar#b.jpg": "synthetic"}
    items = list(expand_job_inputs(TarInput(tar="s3://bucket/s.tar"), storage, MAX, labels))
    assert [(item.uri, item.true_label, item.load()) for item in items] == [
        ("s3://bucket/s.tar#a.jpg", None, b"A"),
        ("s3://bucket/s.tar#b.jpg", "synthetic", b"B"),
    ]


# --- manifests --------------------------------------------------------------------------------


def rows(text: str | bytes, uri: str = "s3://bucket/manifest") -> list[tuple[str, str | None]]:
    stream = io.BytesIO(text if isinstance(text, bytes) else text.encode())
    return [(row.uri, row.label) for row in iter_manifest_rows(stream, uri)]


JSONL = '{"uri": "s3://b/1.jpg", "label": "real"}\n\n{"uri": "s3://b/2.jpg"}\n'
EXPECTED = [("s3://b/1.jpg", "real"), ("s3://b/2.jpg", None)]


@pytest.mark.parametrize(
    ("text", "uri"),
    [
        (JSONL, "s3://bucket/m.jsonl"),
        (JSONL, "s3://bucket/m.NDJSON"),
        ("\n  \n" + JSONL, "s3://bucket/manifest"),  # sniffed from the first non-blank line
        ("uri,label\ns3://b/1.jpg,real\ns3://b/2.jpg,\n", "s3://bucket/m.csv"),
        ("s3://b/1.jpg,real\r\n\r\ns3://b/2.jpg\r\n", "s3://bucket/m.csv"),
        ("\ufeffURI, Label\ns3://b/1.jpg, real\ns3://b/2.jpg\n", "s3://bucket/manifest"),
    ],
)
def test_manifest_formats(text: str, uri: str) -> None:
    assert rows(text, uri) == EXPECTED


def test_manifest_of_only_uris() -> None:
    assert rows("uri\ns3://b/1.jpg\n", "s3://bucket/m.csv") == [("s3://b/1.jpg", None)]


@pytest.mark.parametrize(
    ("text", "uri", "line", "reason"),
    [
        ('{"uri": "s3://b/1.jpg"}\n\n{"uri": \n', "s3://bucket/m.jsonl", 3, "not JSON"),
        ('{"uri": "s3://b/1.jpg"}\n["s3://b/2.jpg"]\n', "s3://bucket/m.jsonl", 2, "expected"),
        ('{"uri": "/etc/passwd"}\n', "s3://bucket/m.jsonl", 1, "s3://"),
        ('{"uri": "s3://b/1.jpg", "lable": "real"}\n', "s3://bucket/m.jsonl", 1, "lable"),
        ('{"uri": "s3://b/1.jpg", "label": "not ok"}\n', "s3://bucket/m.jsonl", 1, "label"),
        ('{"label": "real"}\n', "s3://bucket/m.jsonl", 1, "uri"),
        ("s3://b/1.jpg\ns3://b/2.jpg,real,extra\n", "s3://bucket/m.csv", 2, "3 columns"),
        ("uri,path\ns3://b/1.jpg,x\n", "s3://bucket/m.csv", 1, "header"),
        ("s3://b/1.jpg\n,real\n", "s3://bucket/m.csv", 2, "s3://"),
        ("s3://b/1.jpg\ns3://b/" + "x" * 70_000 + "\n", "s3://bucket/m.csv", 2, "longer than"),
        (b"s3://b/1.jpg\ns3://b/\xff.jpg\n", "s3://bucket/m.csv", 2, "UTF-8"),
    ],
)
def test_malformed_manifest_rows_are_rejected_with_their_line(
    text: str | bytes, uri: str, line: int, reason: str
) -> None:
    with pytest.raises(JobRejected, match=f"line {line}: .*{reason}"):
        rows(text, uri)


def test_manifest_input_streams_items(storage: Storage, remote: MemoryStore) -> None:
    manifest = "".join(
        json.dumps({"uri": f"s3://b/{n}.jpg", "label": "real"}) + "\n" for n in range(3)
    )
    remote.objects["s3://bucket/m.jsonl"] = manifest.encode()
    labels = {"s3://b/0.jpg": "synthetic", "s3://b/9.jpg": "real"}  # the manifest's label wins
    items = expand_job_inputs(ManifestInput(manifest="s3://bucket/m.jsonl"), storage, MAX, labels)
    assert [(item.uri, item.true_label) for item in items] == [
        (f"s3://b/{n}.jpg", "real") for n in range(3)
    ]


# --- tar archives -----------------------------------------------------------------------------


def _every_member_type(compression: str = "", format: int = tarfile.GNU_FORMAT) -> bytes:
    """A tar with one member of every type: folder, file, links, FIFO, devices, unknown."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}", format=format) as tar:
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        info = tarfile.TarInfo("folder/a.jpg")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
        for name, kind, target in [
            ("symlink.jpg", tarfile.SYMTYPE, "/etc/passwd"),
            ("hardlink.jpg", tarfile.LNKTYPE, "folder/a.jpg"),
            ("fifo.jpg", tarfile.FIFOTYPE, ""),
            ("char.jpg", tarfile.CHRTYPE, ""),
            ("block.jpg", tarfile.BLKTYPE, ""),
            (f"{'long/' * 30}symlink.jpg", tarfile.SYMTYPE, f"{'far/' * 30}target.jpg"),
        ]:
            member = tarfile.TarInfo(name)
            member.type, member.linkname = kind, target
            tar.addfile(member)
    return buffer.getvalue()


EXPECTED_MEMBERS = [
    ("folder/a.jpg", None, ""),
    ("symlink.jpg", "symbolic link", "/etc/passwd"),
    ("hardlink.jpg", "hard link", "folder/a.jpg"),
    ("fifo.jpg", "FIFO", ""),
    ("char.jpg", "character device", ""),
    ("block.jpg", "block device", ""),
    (f"{'long/' * 30}symlink.jpg", "symbolic link", f"{'far/' * 30}target.jpg"),
]


@pytest.mark.parametrize(
    ("compression", "format"),
    [
        ("", tarfile.GNU_FORMAT),  # worker.classify.tarstream's own parser
        ("", tarfile.PAX_FORMAT),
        ("gz", tarfile.GNU_FORMAT),  # tarfile's, for compressed streams
    ],
    ids=["gnu", "pax", "gzip"],
)
def test_every_file_like_member_has_an_item_and_non_regular_ones_fail_unsupported_member(
    compression: str, format: int
) -> None:
    data = _every_member_type(compression, format)
    items = list(iter_tar_items(io.BytesIO(data), "s3://b/t.tar", MAX))
    assert uris(items) == [f"s3://b/t.tar#{name}" for name, _, _ in EXPECTED_MEMBERS]
    assert items[0].load() == b"a"
    for item, (name, kind, target) in zip(items[1:], EXPECTED_MEMBERS[1:], strict=True):
        with pytest.raises(ImageFailure) as caught:
            item.load()
        assert caught.value.code == ErrorCode.UNSUPPORTED_MEMBER
        assert f"{name!r} is a {kind}" in caught.value.message
        assert "not a regular file" in caught.value.message
        if target:
            assert repr(target) in caught.value.message


def test_members_of_an_unknown_type_fail_unsupported_member() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        odd = tarfile.TarInfo("odd.jpg")
        odd.type = b"Q"
        tar.addfile(odd)
        info = tarfile.TarInfo("b.jpg")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"b"))
    [odd_item, good] = iter_tar_items(io.BytesIO(buffer.getvalue()), "t.tar", MAX)
    with pytest.raises(ImageFailure, match="unknown type") as caught:
        odd_item.load()
    assert caught.value.code == ErrorCode.UNSUPPORTED_MEMBER
    assert good.load() == b"b"


def test_oversize_and_empty_members_fail_without_stopping_the_stream(tmp_path: Path) -> None:
    big = 8 * 1024 * 1024
    archive = tmp_path / "big.tar"
    archive.write_bytes(make_tar([("big.jpg", bytes(big)), ("empty.jpg", b""), ("ok.jpg", b"ok")]))
    tracemalloc.start()
    try:
        with archive.open("rb") as stream:
            items = list(iter_tar_items(stream, str(archive), max_bytes=1024 * 1024))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < big / 4  # the 8 MiB member was skipped over, never held
    assert [failure_code(items[0]), failure_code(items[1])] == [
        ErrorCode.TOO_LARGE,
        ErrorCode.EMPTY_FILE,
    ]
    assert items[2].load() == b"ok"


@pytest.mark.parametrize("data", [b"", b"not a tar archive at all" * 40])
def test_something_that_is_not_a_tar_is_rejected(data: bytes) -> None:
    with pytest.raises(JobRejected, match="not a readable tar"):
        list(iter_tar_items(io.BytesIO(data), "s3://bucket/x.tar", MAX))


def test_truncated_tar_is_rejected() -> None:
    data = make_tar([("a.jpg", b"a" * 2000)])[:1000]
    with pytest.raises(JobRejected, match="not a readable tar"):
        list(iter_tar_items(io.BytesIO(data), "s3://bucket/x.tar", MAX))


def _shard_members() -> list[tuple[str, bytes | None]]:
    members: list[tuple[str, bytes | None]] = [("real", None)]
    for n in range(12):
        name = f"real/{n:02}.jpg" if n % 3 else f"synthetic/{'long-name-' * 15}{n:02}.jpg"
        members.append((name, bytes([n]) * (n * 300 + 1)))  # 1..3301 bytes: mostly padded
    return members


def test_member_offsets_are_header_boundaries() -> None:
    data = make_tar(_shard_members())
    offsets = list(tar_member_offsets(io.BytesIO(data)))
    assert [name for name, _, _ in offsets] == [name for name, _ in _shard_members()]
    assert offsets[0][1] == 0
    for (_, _, end), (_, next_start, _) in itertools.pairwise(offsets):
        assert end == next_start  # each member ends where the next header starts
    assert all(start % 512 == 0 and end % 512 == 0 for _, start, end in offsets)


@pytest.mark.parametrize("cuts", [[3], [1, 2, 5, 9], list(range(1, 13))])
def test_slices_cut_at_member_offsets_yield_every_member_once(
    tmp_path: Path, storage: Storage, cuts: list[int]
) -> None:
    data = make_tar(_shard_members())
    archive = tmp_path / "shard.tar"
    archive.write_bytes(data)
    offsets = list(tar_member_offsets(io.BytesIO(data)))
    bounds = [offsets[i][1] for i in [0, *cuts]] + [offsets[-1][2]]
    seen: dict[str, bytes] = {}
    for start, end in itertools.pairwise(bounds):
        with storage.open_stream(str(archive), start, end) as stream:
            for item in iter_tar_items(stream, str(archive), MAX):
                member = item.uri.split("#", 1)[1]
                assert member not in seen
                seen[member] = item.load()
    expected = {name: data for name, data in _shard_members() if data is not None}
    assert seen == expected


def test_member_offsets_reject_compressed_tars() -> None:
    with pytest.raises(JobRejected):
        list(tar_member_offsets(io.BytesIO(make_tar([("a.jpg", b"a")], compression="gz"))))
