"""The console's datasets: images, labelled or not, kept where the rest of synthdetect keeps data.

The images live under one root, a folder or an ``s3://`` prefix, through
``worker.storage``; what the console knows about them (which images a dataset
holds, their labels, their latest prediction) is in the console's database
(``worker.serve.db``: SQLite, or PostgreSQL shared by every replica)::

    <root>/<name>/images/<id><ext>      uploaded images, named by their content's sha256
    datasets, dataset_items             metadata: labels ({"labels": [...], "model": ...}), rows

Uploaded files, folders and the members of zip or tar archives are copied under
``images/``; an image uploaded twice is stored once (its key is its content hash) and
a second upload may only add a label it lacked. Pointing at an S3 prefix copies
nothing: its images are read from where they are (their key is their address under
the prefix). Labels are per image and optional, so a dataset can start unlabelled
and be labelled in the console; training reads the labelled ones (``input_items``).

Bad input never stops an upload half way and is never silently dropped: every file
that is not an image the limits allow is listed in the ``AddReport`` with the reason.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import BinaryIO

from worker.classify.inputs import IMAGE_EXTENSIONS, InputItem, object_item
from worker.errors import ImageFailure, SynthdetectError
from worker.imaging import ImageLimits, decode_image_with_source
from worker.serve.db import ConsoleStore, Dataset, DatasetItem, NewItem, StoreError
from worker.storage import S3_SCHEME, Storage, join_uri

DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9._\-]{0,63}$")
"""Dataset and model names: also folder names and URL segments (no slashes, spaces, capitals)."""
LABEL_NAME = re.compile(r"^[^\s/\\]{1,64}$")
"""The wire format's ``Label`` rule: what a label may be anywhere in synthdetect."""
DEFAULT_LABELS = ("real", "synthetic")
MAX_ARCHIVE_MEMBERS = 100_000
"""Archive members read at most; beyond it the rest of the archive is reported, not read."""
ALL = 10_000_000
"""``items`` limit that means every image of a dataset."""


class DatasetError(SynthdetectError):
    """A dataset request that cannot be done; the message says why, for the person asking."""


@dataclass(frozen=True)
class DatasetView:
    """A dataset with what pages show of it: labels, model, counts per label."""

    dataset: Dataset
    counts: dict[str, int]
    """Images per label in label order, then ``unlabelled``."""

    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def labels(self) -> list[str]:
        return labels_of(self.dataset)

    @property
    def model(self) -> str:
        return model_of(self.dataset)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def labels_of(dataset: Dataset) -> list[str]:
    return [str(label) for label in dataset.meta.get("labels", DEFAULT_LABELS)]


def model_of(dataset: Dataset) -> str:
    return str(dataset.meta.get("model", "default"))


@dataclass(frozen=True)
class UploadedFile:
    """A file as the browser sent it: its (relative) name and bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class LabelRule:
    """How uploaded images get labels: none, one label for all, or their folder's name."""

    label: str | None = None
    from_folders: bool = False

    def label_for(self, name: str) -> str | None:
        if self.from_folders:
            folder = PurePosixPath(name).parent.name.lower()
            return folder or None
        return self.label


@dataclass
class AddReport:
    """What an upload did: images added, already present, labels given, and what was refused."""

    added: int = 0
    duplicates: int = 0
    labelled: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """(file name, reason) of every file that did not become an image of the dataset."""

    def describe(self) -> str:
        parts = [f"{self.added} images added"]
        if self.duplicates:
            parts.append(f"{self.duplicates} already there")
        if self.labelled:
            parts.append(f"{self.labelled} labelled")
        if self.rejected:
            parts.append(f"{len(self.rejected)} refused")
        return ", ".join(parts)


class DatasetStore:
    """Datasets: metadata in ``store``, uploaded images under ``root``; thread-safe."""

    def __init__(
        self, store: ConsoleStore, storage: Storage, root: str, limits: ImageLimits
    ) -> None:
        self.store = store
        self.storage = storage
        self.root = root.rstrip("/")
        self.limits = limits

    # --- reading ----------------------------------------------------------------------

    def views(self) -> list[DatasetView]:
        """Every dataset with its counts, newest first."""
        return [self.view(d) for d in self.store.list_datasets()]

    def get(self, name: str) -> Dataset:
        """The dataset called ``name``; ``DatasetError`` if there is none."""
        for dataset in self.store.list_datasets():
            if dataset.name == name:
                return dataset
        raise DatasetError(f"there is no dataset {name!r}")

    def view(self, dataset: Dataset) -> DatasetView:
        counted = self.store.count_items(dataset.id)
        counts = {label: counted.get(label, 0) for label in labels_of(dataset)}
        counts["unlabelled"] = counted.get(None, 0)
        return DatasetView(dataset, counts)

    def items(
        self, dataset: Dataset, labelled: bool | None = None, order: str = "recent"
    ) -> list[DatasetItem]:
        """The dataset's images (``labelled`` True/False filters), newest first by default."""
        return self.store.items(dataset.id, labelled=labelled, order=order, limit=ALL)

    def item(self, dataset: Dataset, key: str) -> DatasetItem:
        item = self.store.item(dataset.id, key)
        if item is None:
            raise DatasetError(f"dataset {dataset.name!r} has no image {key!r}")
        return item

    def image_bytes(self, dataset: Dataset, key: str) -> bytes:
        """The stored bytes of one image (``StorageError`` when its store fails)."""
        return self.storage.get_bytes(self.item(dataset, key).uri, self.limits.max_bytes)

    def input_items(self, dataset: Dataset, labelled: bool | None = None) -> list[InputItem]:
        """The dataset's images as pipeline items (``true_label`` = the image's label),
        oldest first; ``labelled`` True keeps labelled images (training)."""
        return [
            object_item(self.storage, item.uri, self.limits.max_bytes, item.label)
            for item in reversed(self.items(dataset, labelled))
        ]

    # --- writing ----------------------------------------------------------------------

    def create(
        self,
        name: str,
        owner: str,
        labels: Iterable[str] = DEFAULT_LABELS,
        model: str = "default",
    ) -> Dataset:
        """A new, empty dataset that trains ``model``; refuses a taken name or a bad label."""
        _check_name(name, "dataset")
        _check_name(model, "model")
        wanted = _check_labels(labels)
        try:
            return self.store.add_dataset(
                name, join_uri(self.root, name), owner, {"labels": wanted, "model": model}
            )
        except StoreError as exc:
            raise DatasetError(f"a dataset named {name!r} exists already") from exc

    def add_files(
        self, name: str, files: Iterable[UploadedFile], rule: LabelRule, user: str
    ) -> AddReport:
        """Add uploaded files (a folder upload is many files with relative names)."""
        dataset = self.get(name)
        batch = _Batch(dataset, self.items(dataset))
        for upload in files:
            self._add_upload(batch, upload, rule)
        return self._commit(batch, user)

    def add_archive(
        self, name: str, filename: str, stream: BinaryIO, rule: LabelRule, user: str
    ) -> AddReport:
        """Add the images inside a zip or tar (gzip, bzip2, xz) archive.

        Members are read one at a time, each at most ``max_image_bytes``; folders
        inside the archive give labels when ``rule.from_folders``.
        """
        return self.add_files(name, _archive_members(filename, stream, self.limits), rule, user)

    def add_prefix(self, name: str, prefix: str, from_folders: bool, user: str) -> AddReport:
        """Add every image under an ``s3://`` prefix by reference (nothing is copied)."""
        if not prefix.startswith(S3_SCHEME):
            raise DatasetError(f"a prefix must be an s3:// address, not {prefix!r}")
        prefix = prefix.rstrip("/") + "/"
        dataset = self.get(name)
        batch = _Batch(dataset, self.items(dataset))
        rule = LabelRule(from_folders=from_folders)
        for info in self.storage.list_objects(prefix):
            relative = info.uri[len(prefix) :]
            if PurePosixPath(relative).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if info.size > self.limits.max_bytes:
                batch.report.rejected.append((relative, f"{info.size} bytes, over the limit"))
                continue
            batch.place(info.uri, info.uri, rule.label_for(relative), relative)
        return self._commit(batch, user)

    def set_labels(self, name: str, keys: Iterable[str], label: str | None, user: str) -> int:
        """Give ``label`` (None: remove the label) to the listed images; returns how many."""
        dataset = self.get(name)
        if label is not None and label not in labels_of(dataset):
            raise DatasetError(
                f"{label!r} is not a label of {name!r} ({', '.join(labels_of(dataset))})"
            )
        wanted: dict[str, str | None] = dict.fromkeys(keys, label)
        changed = self.store.set_labels(dataset.id, wanted, user)
        if changed != len(wanted):
            known = {item.key for item in self.items(dataset)}
            missing = sorted(set(wanted) - known)
            if missing:
                raise DatasetError(f"dataset {name!r} has no image {missing[0]!r}")
        return changed

    # --- internals --------------------------------------------------------------------

    def _add_upload(self, batch: _Batch, upload: UploadedFile, rule: LabelRule) -> None:
        if isinstance(upload, _Refused):
            batch.report.rejected.append((upload.name, upload.reason))
            return
        try:
            _, source = decode_image_with_source(upload.data, self.limits)
        except ImageFailure as failure:
            batch.report.rejected.append((upload.name, failure.message))
            return
        key = hashlib.sha256(upload.data).hexdigest()[:24]
        uri = join_uri(
            self.root, batch.dataset.name, "images", key + _EXTENSIONS.get(source.format, ".img")
        )
        if batch.place(key, uri, rule.label_for(upload.name), upload.name):
            self.storage.put_bytes(uri, upload.data)

    def _commit(self, batch: _Batch, user: str) -> AddReport:
        if batch.new_labels:
            meta = dict(batch.dataset.meta)
            meta["labels"] = [*labels_of(batch.dataset), *batch.new_labels]
            self.store.update_dataset_meta(batch.dataset.id, meta)
        if batch.added:
            self.store.add_items(batch.dataset.id, batch.added, labelled_by=user)
        if batch.labelled:
            self.store.set_labels(batch.dataset.id, batch.labelled, user)
        return batch.report


class _Batch:
    """One upload's changes, collected before they are written in two statements."""

    def __init__(self, dataset: Dataset, existing: list[DatasetItem]) -> None:
        self.dataset = dataset
        self.known: dict[str, str | None] = {item.key: item.label for item in existing}
        self.labels = labels_of(dataset)
        self.new_labels: list[str] = []
        self.added: list[NewItem] = []
        self.labelled: dict[str, str | None] = {}
        self.report = AddReport()

    def place(self, key: str, uri: str, label: str | None, name: str) -> bool:
        """Count one image in; True if it is new (its bytes must be stored)."""
        if label is not None and not LABEL_NAME.match(label):
            self.report.rejected.append((name, f"{label!r} cannot be a label"))
            return False
        if label is not None and label not in self.labels:
            self.labels.append(label)
            self.new_labels.append(label)
        if key in self.known:
            self.report.duplicates += 1
            if self.known[key] is None and label is not None:
                self.known[key] = label
                self.labelled[key] = label
                self.report.labelled += 1
            return False
        self.known[key] = label
        self.added.append(NewItem(key=key, uri=uri, label=label))
        self.report.added += 1
        self.report.labelled += label is not None
        return True


_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
}


@dataclass(frozen=True)
class _Refused(UploadedFile):
    """An archive member that was not read, and why (it joins the report's refusals)."""

    reason: str = ""


def _archive_members(
    filename: str, stream: BinaryIO, limits: ImageLimits
) -> Iterator[UploadedFile]:
    """Regular members of a zip or tar archive, told apart by their first bytes."""
    head = stream.read(4)
    stream.seek(0)
    if head.startswith(b"PK"):
        yield from _zip_members(filename, stream, limits)
    else:
        yield from _tar_members(filename, stream, limits)


def _zip_members(filename: str, stream: BinaryIO, limits: ImageLimits) -> Iterator[UploadedFile]:
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{filename} is not a readable zip archive: {exc}") from exc
    with archive:
        for count, info in enumerate(archive.infolist()):
            if count >= MAX_ARCHIVE_MEMBERS:
                yield _Refused(filename, b"", f"more than {MAX_ARCHIVE_MEMBERS} members")
                return
            if info.is_dir() or _hidden(info.filename):
                continue
            if info.file_size > limits.max_bytes:
                yield _Refused(info.filename, b"", f"{info.file_size} bytes, over the limit")
                continue
            try:
                with archive.open(info) as member:
                    data = member.read(limits.max_bytes + 1)
            except (zipfile.BadZipFile, OSError, NotImplementedError) as exc:
                yield _Refused(info.filename, b"", f"cannot be read: {exc}")
                continue
            yield UploadedFile(info.filename, data)


def _tar_members(filename: str, stream: BinaryIO, limits: ImageLimits) -> Iterator[UploadedFile]:
    try:
        archive = tarfile.open(fileobj=stream, mode="r:*")  # noqa: SIM115 - closed by `with` below
    except (tarfile.TarError, OSError) as exc:
        raise DatasetError(f"{filename} is neither a zip nor a tar archive ({exc})") from exc
    with archive:
        for count, member in enumerate(archive):
            if count >= MAX_ARCHIVE_MEMBERS:
                yield _Refused(filename, b"", f"more than {MAX_ARCHIVE_MEMBERS} members")
                return
            if not member.isreg() or _hidden(member.name):
                continue
            if member.size > limits.max_bytes:
                yield _Refused(member.name, b"", f"{member.size} bytes, over the limit")
                continue
            extracted = archive.extractfile(member)
            if extracted is None:
                continue
            yield UploadedFile(member.name, extracted.read())


def _hidden(name: str) -> bool:
    """OS litter in archives: ``__MACOSX/``, ``.DS_Store``, ``._x.jpg``."""
    return any(part.startswith((".", "__MACOSX")) for part in PurePosixPath(name).parts)


def _check_name(name: str, what: str) -> None:
    if not DATASET_NAME.match(name):
        raise DatasetError(
            f"{name!r} cannot name a {what}: use 1-64 lower-case letters, digits, '.', '_' or '-'"
        )


def _check_labels(labels: Iterable[str]) -> list[str]:
    wanted: list[str] = []
    for label in labels:
        label = label.strip()
        if not LABEL_NAME.match(label):
            raise DatasetError(f"{label!r} cannot be a label: no spaces or slashes, 1-64 chars")
        if label not in wanted:
            wanted.append(label)
    if len(wanted) < 2:
        raise DatasetError("a dataset needs at least two labels to train a classifier")
    return wanted
