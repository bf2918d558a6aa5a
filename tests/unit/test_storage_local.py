"""LocalStore, the Storage router and the address helpers."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.support.memory_store import MemoryStore
from worker.errors import AccessDenied, ObjectNotFound, ObjectTooLarge
from worker.settings import Settings
from worker.storage import LocalStore, ObjectInfo, Storage, join_uri, parse_s3_uri


@pytest.fixture
def store() -> LocalStore:
    return LocalStore()


def _write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- reading ---------------------------------------------------------------------


def test_get_bytes_reads_paths_and_file_uris(store: LocalStore, tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jpg", b"hello")
    assert store.get_bytes(str(path)) == b"hello"
    assert store.get_bytes(f"file://{path}") == b"hello"


def test_get_bytes_checks_the_limit(store: LocalStore, tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jpg", b"12345")
    assert store.get_bytes(str(path), max_bytes=5) == b"12345"
    with pytest.raises(ObjectTooLarge) as caught:
        store.get_bytes(str(path), max_bytes=4)
    assert (caught.value.size, caught.value.limit) == (5, 4)


@pytest.mark.parametrize("name", ["missing.jpg", "folder", "file.jpg/inside"])
def test_get_bytes_of_no_file_is_not_found(store: LocalStore, tmp_path: Path, name: str) -> None:
    (tmp_path / "folder").mkdir()
    _write(tmp_path / "file.jpg")
    with pytest.raises(ObjectNotFound):
        store.get_bytes(str(tmp_path / name))


def test_permission_errors_are_access_denied(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("worker.storage.open", refuse, raising=False)  # root ignores chmod
    with pytest.raises(AccessDenied):
        store.get_bytes(str(_write(tmp_path / "secret.jpg")))


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [(0, None, b"0123456789"), (3, None, b"3456789"), (2, 5, b"234"), (8, 100, b"89"), (4, 4, b"")],
)
def test_open_stream_reads_a_window(
    store: LocalStore, tmp_path: Path, start: int, end: int | None, expected: bytes
) -> None:
    path = _write(tmp_path / "data.bin", b"0123456789")
    with store.open_stream(str(path), start, end) as stream:
        assert stream.read() == expected


def test_open_stream_of_a_missing_file_is_not_found(store: LocalStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        store.open_stream(str(tmp_path / "nope.tar"))


# --- writing ---------------------------------------------------------------------


def test_put_bytes_creates_folders_and_overwrites(store: LocalStore, tmp_path: Path) -> None:
    target = tmp_path / "out" / "job" / "part-00000.jsonl"
    store.put_bytes(str(target), b"first")
    store.put_bytes(f"file://{target}", b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["part-00000.jsonl"]  # no temporary files left


def test_put_if_absent_creates_once(store: LocalStore, tmp_path: Path) -> None:
    target = str(tmp_path / "job" / "claim")
    assert store.put_if_absent(target, b"mine") is True
    assert store.put_if_absent(target, b"theirs") is False
    assert store.get_bytes(target) == b"mine"
    assert os.listdir(tmp_path / "job") == ["claim"]


def test_put_if_absent_has_one_winner_among_threads(store: LocalStore, tmp_path: Path) -> None:
    target = str(tmp_path / "claim")
    start = threading.Barrier(8)
    wins: list[int] = []

    def claim(worker: int) -> None:
        start.wait()
        if store.put_if_absent(target, str(worker).encode()):
            wins.append(worker)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    assert store.get_bytes(target) == str(wins[0]).encode()


def test_exists_and_delete(store: LocalStore, tmp_path: Path) -> None:
    path = str(_write(tmp_path / "a.jpg"))
    assert store.exists(path)
    assert not store.exists(str(tmp_path))  # a folder is not an object
    store.delete(path)
    assert not store.exists(path)
    store.delete(path)  # deleting a missing object is fine, as in S3


# --- listing ---------------------------------------------------------------------


def test_list_objects_uses_s3_key_order_and_skips_hidden(store: LocalStore, tmp_path: Path) -> None:
    for name in ["b/x.jpg", "b.txt", "a.jpg", ".hidden.jpg", ".git/config", "b/.DS_Store", "c"]:
        _write(tmp_path / name, b"12")
    listed = list(store.list_objects(str(tmp_path)))
    names = [Path(info.uri).relative_to(tmp_path).as_posix() for info in listed]
    assert names == ["a.jpg", "b.txt", "b/x.jpg", "c"]  # "b.txt" < "b/x.jpg", as S3 sorts keys
    assert names == sorted(names)
    assert {info.size for info in listed} == {2}


def test_list_objects_by_partial_name_and_file_uri(store: LocalStore, tmp_path: Path) -> None:
    for name in ["img1.jpg", "img2/a.png", "other.jpg"]:
        _write(tmp_path / name)
    listed = [info.uri for info in store.list_objects(f"file://{tmp_path}/img")]
    assert listed == [f"file://{tmp_path}/img1.jpg", f"file://{tmp_path}/img2/a.png"]


def test_list_objects_of_a_missing_folder_is_empty(store: LocalStore, tmp_path: Path) -> None:
    assert list(store.list_objects(str(tmp_path / "nothing") + "/")) == []


def test_list_objects_does_not_follow_folder_links(store: LocalStore, tmp_path: Path) -> None:
    _write(tmp_path / "real" / "a.jpg")
    (tmp_path / "real" / "loop").symlink_to(tmp_path / "real")
    assert [Path(i.uri).name for i in store.list_objects(str(tmp_path))] == ["a.jpg"]


# --- routing and addresses -------------------------------------------------------------


def test_storage_creates_the_s3_store_only_for_s3_addresses(tmp_path: Path) -> None:
    created: list[MemoryStore] = []

    def make_s3() -> MemoryStore:
        created.append(MemoryStore({"s3://bucket/a.jpg": b"remote"}))
        return created[-1]

    storage = Storage(make_s3)
    path = _write(tmp_path / "a.jpg", b"local")
    assert storage.get_bytes(str(path)) == b"local"
    assert created == []
    assert storage.get_bytes("s3://bucket/a.jpg") == b"remote"
    assert list(storage.list_objects("s3://bucket/")) == [ObjectInfo("s3://bucket/a.jpg", 6)]
    assert len(created) == 1


def test_storage_from_settings_needs_no_s3_for_local_files(tmp_path: Path) -> None:
    storage = Storage.from_settings(Settings(s3_endpoint_url="http://127.0.0.1:1"))
    storage.put_bytes(str(tmp_path / "a"), b"1")
    assert storage.exists(str(tmp_path / "a"))
    assert storage._s3 is None


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/a/b.jpg", ("bucket", "a/b.jpg")),
        ("s3://bucket/prefix/", ("bucket", "prefix/")),
        ("s3://bucket", ("bucket", "")),
    ],
)
def test_parse_s3_uri(uri: str, expected: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize("uri", ["/local/path", "s3://", "s3:///key", "http://bucket/key"])
def test_parse_s3_uri_rejects_other_addresses(uri: str) -> None:
    with pytest.raises(ValueError, match=r"s3://|bucket"):
        parse_s3_uri(uri)


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3://out/", ("job-1", "summary.json"), "s3://out/job-1/summary.json"),
        ("s3://out", ("/job-1/", "/part.jsonl"), "s3://out/job-1/part.jsonl"),
        ("/tmp/out", ("a", "", "b"), "/tmp/out/a/b"),
        ("s3://out/prefix", (), "s3://out/prefix"),
    ],
)
def test_join_uri(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert join_uri(base, *parts) == expected
