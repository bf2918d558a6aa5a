"""The console's datasets: images, labelled or not, kept where the rest of synthdetect keeps data.

A dataset lives under one root, a folder or an ``s3://`` prefix, through ``worker.storage``::

    <root>/<name>/dataset.json          the record: labels, and every item with its label
    <root>/<name>/images/<id><ext>      uploaded images, named by their content's sha256

Uploaded files, folders and the members of zip or tar archives are copied under
``images/``; an image uploaded twice is stored once (its id is its content hash) and
a second upload may only add a label it lacked. Pointing at an S3 prefix copies
nothing: its images are read from where they are. Labels are per image and optional,
so a dataset can start unlabelled and be labelled in the console; training reads the
labelled ones (``input_items``).

Bad input never stops an upload half way and is never silently dropped: every file
that is not an image the limits allow is listed in the ``AddReport`` with the reason.
The record is rewritten whole on each change (one atomic PUT); one process serves the
console, and a lock per store serialises its writers.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import threading
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import BinaryIO

from pydantic import BaseModel, Field, ValidationError

from worker.classify.inputs import IMAGE_EXTENSIONS, InputItem, object_item
from worker.errors import ImageFailure, ObjectNotFound, SynthdetectError
from worker.imaging import ImageLimits, decode_image_with_source
from worker.storage import S3_SCHEME, Storage, join_uri

DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9._\-]{0,63}$")
"""Dataset names: also folder names and URL segments, so no slashes, spaces or capitals."""
LABEL_NAME = re.compile(r"^[^\s/\\]{1,64}$")
"""The wire format's ``Label`` rule: what a label may be anywhere in synthdetect."""
DEFAULT_LABELS = ("real", "synthetic")
MAX_ARCHIVE_MEMBERS = 100_000
"""Archive members read at most; beyond it the rest of the archive is reported, not read."""
RECORD = "dataset.json"


class DatasetError(SynthdetectError):
    """A dataset request that cannot be done; the message says why, for the person asking."""


class DatasetItem(BaseModel):
    """One image of a dataset: where its bytes are, what it was called, its label if any."""

    id: str
    uri: str
    name: str = Field(description="The file's name or relative path as uploaded, or its key.")
    label: str | None = None
    seq: int = Field(description="Order of arrival: higher is newer.")


class DatasetRecord(BaseModel):
    """Everything ``dataset.json`` holds."""

    name: str
    labels: list[str]
    model: str = Field(description="The registry model this dataset trains, e.g. 'default'.")
    created_at: datetime
    next_seq: int = 0
    items: list[DatasetItem] = Field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Images per label, plus ``unlabelled``, in the dataset's label order."""
        counted = {label: 0 for label in self.labels}
        unlabelled = 0
        for item in self.items:
            if item.label is None:
                unlabelled += 1
            else:
                counted[item.label] = counted.get(item.label, 0) + 1
        return {**counted, "unlabelled": unlabelled}

    def item(self, item_id: str) -> DatasetItem:
        for item in self.items:
            if item.id == item_id:
                return item
        raise DatasetError(f"dataset {self.name!r} has no image {item_id!r}")


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
    """Datasets under ``root``; every method is safe to call from several threads."""

    def __init__(self, storage: Storage, root: str, limits: ImageLimits) -> None:
        self.storage = storage
        self.root = root.rstrip("/")
        self.limits = limits
        self._lock = threading.RLock()

    # --- reading ----------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every dataset's name, sorted."""
        prefix = self.root + "/"
        names = {
            info.uri[len(prefix) :].split("/")[0]
            for info in self.storage.list_objects(prefix)
            if info.uri.endswith("/" + RECORD) and info.uri[len(prefix) :].count("/") == 1
        }
        return sorted(names)

    def get(self, name: str) -> DatasetRecord:
        """The record of ``name``; ``DatasetError`` if there is none."""
        _check_name(name)
        try:
            raw = self.storage.get_bytes(self._record_uri(name))
        except ObjectNotFound as exc:
            raise DatasetError(f"there is no dataset {name!r}") from exc
        try:
            return DatasetRecord.model_validate_json(raw)
        except ValidationError as exc:
            raise DatasetError(f"the record of dataset {name!r} is damaged: {exc}") from exc

    def image_bytes(self, name: str, item_id: str) -> bytes:
        """The stored bytes of one image (``StorageError`` when its store fails)."""
        return self.storage.get_bytes(self.get(name).item(item_id).uri, self.limits.max_bytes)

    def input_items(self, record: DatasetRecord, labelled: bool | None = None) -> list[InputItem]:
        """The dataset's images as pipeline items (``true_label`` = the image's label).

        ``labelled`` True keeps labelled images (training), False unlabelled ones,
        None all of them.
        """
        return [
            object_item(self.storage, item.uri, self.limits.max_bytes, item.label)
            for item in record.items
            if labelled is None or (item.label is not None) == labelled
        ]

    # --- writing ----------------------------------------------------------------------

    def create(
        self, name: str, labels: Iterable[str] = DEFAULT_LABELS, model: str = "default"
    ) -> DatasetRecord:
        """A new, empty dataset that trains ``model``; refuses a taken name or a bad label."""
        _check_name(name)
        if not DATASET_NAME.match(model):
            raise DatasetError(f"{model!r} cannot name a model: lower-case letters, digits, ._-")
        wanted = _check_labels(labels)
        with self._lock:
            record = DatasetRecord(
                name=name, labels=wanted, model=model, created_at=datetime.now(UTC)
            )
            created = self.storage.put_if_absent(
                self._record_uri(name), record.model_dump_json(indent=1).encode()
            )
            if not created:
                raise DatasetError(f"a dataset named {name!r} exists already")
            return record

    def add_files(self, name: str, files: Iterable[UploadedFile], rule: LabelRule) -> AddReport:
        """Add uploaded files (a folder upload is many files with relative names)."""
        report = AddReport()
        with self._lock:
            record = self.get(name)
            known = {item.id: item for item in record.items}
            for upload in files:
                self._add_one(record, known, upload, rule, report)
            self._save(record)
        return report

    def add_archive(self, name: str, filename: str, stream: BinaryIO, rule: LabelRule) -> AddReport:
        """Add the images inside a zip or tar (gzip, bzip2, xz) archive.

        Members are read one at a time, each at most ``max_image_bytes``; folders
        inside the archive give labels when ``rule.from_folders``.
        """
        return self.add_files(name, _archive_members(filename, stream, self.limits), rule)

    def add_prefix(self, name: str, prefix: str, from_folders: bool) -> AddReport:
        """Add every image under an ``s3://`` prefix by reference (nothing is copied)."""
        if not prefix.startswith(S3_SCHEME):
            raise DatasetError(f"a prefix must be an s3:// address, not {prefix!r}")
        prefix = prefix.rstrip("/") + "/"
        report = AddReport()
        with self._lock:
            record = self.get(name)
            known = {item.id: item for item in record.items}
            for info in self.storage.list_objects(prefix):
                relative = info.uri[len(prefix) :]
                if PurePosixPath(relative).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                if info.size > self.limits.max_bytes:
                    report.rejected.append((relative, f"{info.size} bytes, over the limit"))
                    continue
                label = LabelRule(from_folders=from_folders).label_for(relative)
                item_id = "u" + hashlib.sha256(info.uri.encode()).hexdigest()[:20]
                self._place(record, known, item_id, info.uri, relative, label, report)
            self._save(record)
        return report

    def set_labels(self, name: str, item_ids: Iterable[str], label: str | None) -> int:
        """Give ``label`` (None: remove the label) to the listed images; returns how many."""
        with self._lock:
            record = self.get(name)
            if label is not None and label not in record.labels:
                raise DatasetError(
                    f"{label!r} is not a label of {name!r} ({', '.join(record.labels)})"
                )
            wanted = set(item_ids)
            changed = 0
            for i, item in enumerate(record.items):
                if item.id in wanted:
                    wanted.discard(item.id)
                    if item.label != label:
                        record.items[i] = item.model_copy(update={"label": label})
                        changed += 1
            if wanted:
                raise DatasetError(f"dataset {name!r} has no image {sorted(wanted)[0]!r}")
            self._save(record)
            return changed

    # --- internals --------------------------------------------------------------------

    def _add_one(
        self,
        record: DatasetRecord,
        known: dict[str, DatasetItem],
        upload: UploadedFile,
        rule: LabelRule,
        report: AddReport,
    ) -> None:
        if isinstance(upload, _Refused):
            report.rejected.append((upload.name, upload.reason))
            return
        try:
            _, source = decode_image_with_source(upload.data, self.limits)
        except ImageFailure as failure:
            report.rejected.append((upload.name, failure.message))
            return
        item_id = hashlib.sha256(upload.data).hexdigest()[:24]
        ext = _EXTENSIONS.get(source.format, ".img")
        uri = join_uri(self.root, record.name, "images", item_id + ext)
        if item_id not in known:
            self.storage.put_bytes(uri, upload.data)
        self._place(record, known, item_id, uri, upload.name, rule.label_for(upload.name), report)

    def _place(
        self,
        record: DatasetRecord,
        known: dict[str, DatasetItem],
        item_id: str,
        uri: str,
        name: str,
        label: str | None,
        report: AddReport,
    ) -> None:
        if label is not None and not LABEL_NAME.match(label):
            report.rejected.append((name, f"{label!r} cannot be a label"))
            return
        if label is not None and label not in record.labels:
            record.labels.append(label)
        existing = known.get(item_id)
        if existing is not None:
            report.duplicates += 1
            if existing.label is None and label is not None:
                updated = existing.model_copy(update={"label": label})
                record.items[record.items.index(existing)] = updated
                known[item_id] = updated
                report.labelled += 1
            return
        item = DatasetItem(id=item_id, uri=uri, name=name, label=label, seq=record.next_seq)
        record.next_seq += 1
        record.items.append(item)
        known[item_id] = item
        report.added += 1
        report.labelled += label is not None

    def _save(self, record: DatasetRecord) -> None:
        self.storage.put_bytes(
            self._record_uri(record.name),
            record.model_dump_json(indent=1).encode(),
            content_type="application/json",
        )

    def _record_uri(self, name: str) -> str:
        return join_uri(self.root, name, RECORD)


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
        archive = tarfile.open(fileobj=stream, mode="r:*")
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


def _check_name(name: str) -> None:
    if not DATASET_NAME.match(name):
        raise DatasetError(
            f"{name!r} cannot name a dataset: use 1-64 lower-case letters, digits, '.', '_' or '-'"
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
