"""DatasetStore: create, upload files, folders and archives, S3 prefixes, labels; on SQLite and
PostgreSQL (skipped where no PostgreSQL answers at 127.0.0.1:5432)."""

from __future__ import annotations

import io
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.memory_store import MemoryStore
from tests.support.toy_images import png_bytes
from tests.unit.serve.test_db import POSTGRES_URL, postgres_or_skip
from worker.imaging import ImageLimits
from worker.serve.datasets import DatasetError, DatasetStore, LabelRule, UploadedFile
from worker.serve.db import ConsoleStore, open_store
from worker.settings import Settings
from worker.storage import Storage

LIMITS = ImageLimits.from_settings(Settings())


def image(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))


@pytest.fixture
def s3() -> MemoryStore:
    return MemoryStore()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def records(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConsoleStore]:
    if request.param == "sqlite":
        opened = open_store("", tmp_path)
        yield opened
        opened.close()
        return
    postgres_or_skip()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    opened = open_store(POSTGRES_URL, tmp_path, schema=schema)
    try:
        yield opened
    finally:
        opened.close()
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def store(records: ConsoleStore, tmp_path: Path, s3: MemoryStore) -> DatasetStore:
    """Datasets on SQLite and on PostgreSQL (the console database's two implementations)."""
    return DatasetStore(records, Storage(lambda: s3), str(tmp_path / "datasets"), LIMITS)


def labels(store: DatasetStore, name: str) -> list[str | None]:
    """Labels of the dataset's images in upload order."""
    return [item.label for item in reversed(store.items(store.get(name)))]


def test_create_lists_and_refuses_a_taken_or_bad_name(store: DatasetStore) -> None:
    created = store.create("faces", "ann", ["real", "synthetic"], model="faces-model")
    view = store.views()[0]
    assert (view.name, view.labels, view.model) == ("faces", ["real", "synthetic"], "faces-model")
    assert view.counts == {"real": 0, "synthetic": 0, "unlabelled": 0}
    assert store.get("faces") == created
    with pytest.raises(DatasetError, match="exists already"):
        store.create("faces", "ann")
    with pytest.raises(DatasetError, match="cannot name a dataset"):
        store.create("Bad Name", "ann")
    with pytest.raises(DatasetError, match="cannot name a model"):
        store.create("ok", "ann", model="../x")
    with pytest.raises(DatasetError, match="at least two labels"):
        store.create("one", "ann", ["real"])
    with pytest.raises(DatasetError, match="cannot be a label"):
        store.create("spaces", "ann", ["a b", "c"])
    with pytest.raises(DatasetError, match="no dataset"):
        store.get("missing")


def test_files_are_stored_once_by_content_and_bad_ones_are_reported(store: DatasetStore) -> None:
    store.create("d", "ann")
    files = [
        UploadedFile("a.png", image(1)),
        UploadedFile("b.png", image(2)),
        UploadedFile("copy-of-a.png", image(1)),
        UploadedFile("notes.txt", b"not an image"),
    ]
    report = store.add_files("d", files, LabelRule(label="real"), "ann")
    assert (report.added, report.duplicates, report.labelled) == (2, 1, 2)
    assert [name for name, _ in report.rejected] == ["notes.txt"]
    dataset = store.get("d")
    items = store.items(dataset)
    assert len(items) == 2
    assert {item.label for item in items} == {"real"}
    assert {item.labelled_by for item in items} == {"ann"}
    assert {store.image_bytes(dataset, item.key) for item in items} == {image(1), image(2)}
    assert store.item(dataset, items[0].key) == items[0]
    with pytest.raises(DatasetError, match="no image"):
        store.item(dataset, "0" * 24)
    assert store.view(dataset).counts == {"real": 2, "synthetic": 0, "unlabelled": 0}


def test_a_folder_upload_takes_labels_from_folder_names(store: DatasetStore) -> None:
    store.create("d", "ann")
    files = [
        UploadedFile("cifake/real/1.png", image(1)),
        UploadedFile("cifake/synthetic/2.png", image(2)),
        UploadedFile("loose.png", image(3)),
    ]
    store.add_files("d", files, LabelRule(from_folders=True), "ann")
    assert store.view(store.get("d")).counts == {"real": 1, "synthetic": 1, "unlabelled": 1}


def test_a_new_folder_name_becomes_a_label_and_an_unlabelled_copy_gains_one(
    store: DatasetStore,
) -> None:
    store.create("d", "ann")
    store.add_files("d", [UploadedFile("x.png", image(1))], LabelRule(), "ann")
    report = store.add_files(
        "d", [UploadedFile("fake/x.png", image(1))], LabelRule(from_folders=True), "bob"
    )
    assert (report.added, report.duplicates, report.labelled) == (0, 1, 1)
    view = store.view(store.get("d"))
    assert view.labels == ["real", "synthetic", "fake"]
    assert labels(store, "d") == ["fake"]


def test_zip_and_tar_archives_add_their_images(store: DatasetStore) -> None:
    store.create("d", "ann")
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("real/1.png", image(1))
        archive.writestr("__MACOSX/real/._1.png", b"litter")
        archive.writestr("synthetic/2.png", image(2))
        archive.writestr("readme.txt", b"hello")
    zipped.seek(0)
    report = store.add_archive("d", "set.zip", zipped, LabelRule(from_folders=True), "ann")
    assert (report.added, [n for n, _ in report.rejected]) == (2, ["readme.txt"])

    tarred = io.BytesIO()
    with tarfile.open(fileobj=tarred, mode="w:gz") as archive:
        for name, data in [("unlabelled/3.png", image(3)), ("4.png", image(4))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    tarred.seek(0)
    report = store.add_archive("d", "more.tgz", tarred, LabelRule(), "ann")
    assert report.added == 2
    assert store.view(store.get("d")).counts == {"real": 1, "synthetic": 1, "unlabelled": 2}

    with pytest.raises(DatasetError, match="neither a zip nor a tar"):
        store.add_archive("d", "junk.tar", io.BytesIO(b"\x00junk" * 10), LabelRule(), "ann")


def test_an_s3_prefix_is_added_by_reference(store: DatasetStore, s3: MemoryStore) -> None:
    s3.objects.update(
        {
            "s3://b/set/real/1.png": image(1),
            "s3://b/set/synthetic/2.png": image(2),
            "s3://b/set/labels.csv": b"uri,label",
        }
    )
    store.create("d", "ann")
    report = store.add_prefix("d", "s3://b/set", from_folders=True, user="ann")
    assert report.added == 2
    dataset = store.get("d")
    assert sorted((i.uri, i.label) for i in store.items(dataset)) == [
        ("s3://b/set/real/1.png", "real"),
        ("s3://b/set/synthetic/2.png", "synthetic"),
    ]
    items = store.input_items(dataset, labelled=True)
    assert sorted(i.load() for i in items) == sorted([image(1), image(2)])
    assert not any(uri.startswith(store.root) for uri in s3.objects)  # nothing copied
    with pytest.raises(DatasetError, match="s3://"):
        store.add_prefix("d", "/etc", from_folders=False, user="ann")


def test_labels_are_set_and_cleared_only_with_known_labels_and_images(
    store: DatasetStore,
) -> None:
    store.create("d", "ann")
    store.add_files("d", [UploadedFile(f"{i}.png", image(i)) for i in range(3)], LabelRule(), "ann")
    keys = [item.key for item in reversed(store.items(store.get("d")))]
    assert store.set_labels("d", keys[:2], "synthetic", "bob") == 2
    assert store.set_labels("d", keys[:1], None, "bob") == 1
    assert sorted(labels(store, "d"), key=str) == sorted([None, "synthetic", None], key=str)
    assert len(store.input_items(store.get("d"), labelled=False)) == 2
    with pytest.raises(DatasetError, match="not a label"):
        store.set_labels("d", keys, "cat", "bob")
    with pytest.raises(DatasetError, match="no image"):
        store.set_labels("d", ["nope"], "real", "bob")
