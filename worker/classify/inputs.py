"""What to classify: inputs expanded into a lazy stream of ``InputItem``.

Every function here is a generator that reads listings, manifests and tar
archives as it goes, so a prefix or tar of 100,000 images costs the memory of a
few items, never of a list. An item's bytes are read when its ``load`` is called
(tar members excepted: a tar is one stream, so a member is read when the stream
passes it, and ``load`` hands those bytes over).

``load`` raises ``ImageFailure`` (one image failed, the job goes on). The
expansion itself raises ``StorageError`` when a listing, manifest or tar cannot
be read, and ``JobRejected`` when a manifest or tar is malformed.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, assert_never

from pydantic import ValidationError

from contracts import ErrorCode, ManifestInput, PrefixInput, ShardItem, TarInput, UriListInput
from contracts.jobs import JobInputs
from worker.classify.tarstream import Member, Readable, read_members
from worker.errors import (
    AccessDenied,
    ImageFailure,
    JobRejected,
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
    UnsafeKey,
)
from worker.storage import FILE_SCHEME, S3_SCHEME, ObjectInfo, Storage, parse_s3_uri

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
"""Files a folder or prefix expansion picks up (compared lower-cased)."""

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
"""Paths given to ``expand_paths`` with these endings are read as archives of images."""

_MAX_MANIFEST_LINE = 64 * 1024
"""Longer manifest lines are rejected: a row is a URI and a label, and reading a line
with no end in sight would hold an unbounded amount of memory."""


@dataclass(frozen=True)
class InputItem:
    """One image to classify.

    ``uri`` is an ``s3://`` address, a local path, or ``<tar address>#<member name>``.
    ``load()`` returns the image's bytes or raises ``ImageFailure`` with code
    ``not_found``, ``forbidden``, ``too_large``, ``empty_file``, ``storage_unavailable``
    (transient: the shard retries), ``storage_rejected``, ``fetch_failed``,
    ``unsafe_key`` (a listed key with ``..`` and the like) or ``unsupported_member``
    (a tar member that is not a regular file).
    ``in_memory`` says ``load`` only hands over bytes already read (tar members), so
    the pipeline decodes such items in chunks instead of giving each a fetch thread;
    ``size`` is then their byte count (0 when unknown).
    """

    uri: str
    load: Callable[[], bytes]
    true_label: str | None = None
    in_memory: bool = False
    size: int = 0


def object_item(
    storage: Storage, uri: str, max_bytes: int, true_label: str | None = None
) -> InputItem:
    """An item whose ``load`` reads one object (at most ``max_bytes``) when called."""
    return InputItem(uri, partial(_load_object, storage, uri, max_bytes), true_label)


def _load_object(storage: Storage, uri: str, max_bytes: int) -> bytes:
    try:
        data = storage.get_bytes(uri, max_bytes)
    except UnsafeKey as exc:
        raise ImageFailure(ErrorCode.UNSAFE_KEY, exc.reason) from exc
    except ObjectNotFound as exc:
        raise ImageFailure(ErrorCode.NOT_FOUND, str(exc)) from exc
    except AccessDenied as exc:
        raise ImageFailure(ErrorCode.FORBIDDEN, str(exc)) from exc
    except ObjectTooLarge as exc:
        raise ImageFailure(ErrorCode.TOO_LARGE, str(exc)) from exc
    except StorageError as exc:
        raise ImageFailure(_storage_code(exc), str(exc)) from exc
    if not data:
        raise ImageFailure(ErrorCode.EMPTY_FILE, f"{uri} has zero bytes")
    return data


def _storage_code(exc: StorageError) -> ErrorCode:
    """``storage_unavailable`` for transient failures (the shard retries those), the error's own
    code for permanent ones (``storage_rejected``), ``fetch_failed`` for anything else."""
    if exc.transient:
        return ErrorCode.STORAGE_UNAVAILABLE
    try:
        return ErrorCode(exc.code)
    except ValueError:
        return ErrorCode.FETCH_FAILED


# --- the CLI's paths ---------------------------------------------------------------------


def expand_paths(
    paths: Sequence[str], storage: Storage, max_bytes: int, labels_from_folders: bool = False
) -> Iterator[InputItem]:
    """Items for the paths a user typed, in the order given.

    - a local file is always attempted, whatever its extension;
    - a local folder yields its images recursively, in sorted order, skipping
      hidden files and folders and files without an image extension;
    - a ``.tar`` (``.tar.gz``, ``.tgz``) file or object yields its regular members;
    - an ``s3://`` address of an object yields that object; otherwise it is a
      prefix (a folder: ``/`` is implied) whose images are listed like a folder's;
    - a path that names nothing yields one item that fails ``not_found``, so a
      typo is reported instead of silently skipped.

    With ``labels_from_folders`` each item's ``true_label`` is the name of the
    folder holding the image (for tar members: the member's folder), lower-cased.
    """
    for path in paths:
        if path.startswith(S3_SCHEME):
            yield from _expand_s3_path(path, storage, max_bytes, labels_from_folders)
        else:
            yield from _expand_local_path(path, storage, max_bytes, labels_from_folders)


def _expand_s3_path(
    uri: str, storage: Storage, max_bytes: int, labels_from_folders: bool
) -> Iterator[InputItem]:
    _, key = parse_s3_uri(uri)
    if key and not key.endswith("/") and storage.exists(uri):
        yield from _expand_object(uri, storage, max_bytes, labels_from_folders)
        return
    prefix = uri.rstrip("/") + "/"
    listing = storage.list_objects(prefix)
    first = next(listing, None)
    if first is None:
        yield object_item(storage, uri, max_bytes)
        return
    yield from _folder_images(
        itertools.chain([first], listing), prefix, storage, max_bytes, labels_from_folders
    )


def _expand_local_path(
    path: str, storage: Storage, max_bytes: int, labels_from_folders: bool
) -> Iterator[InputItem]:
    local = Path(path.removeprefix(FILE_SCHEME))
    if local.is_dir():
        prefix = path if path.endswith("/") else path + "/"
        listing = storage.list_objects(prefix)
        yield from _folder_images(listing, prefix, storage, max_bytes, labels_from_folders)
    elif local.is_file():
        yield from _expand_object(path, storage, max_bytes, labels_from_folders)
    else:
        yield object_item(storage, path, max_bytes)


def _expand_object(
    uri: str, storage: Storage, max_bytes: int, labels_from_folders: bool
) -> Iterator[InputItem]:
    if uri.lower().endswith(TAR_SUFFIXES):
        with storage.open_stream(uri) as stream:
            yield from iter_tar_items(stream, uri, max_bytes, labels_from_folders)
    else:
        label = folder_label(uri) if labels_from_folders else None
        yield object_item(storage, uri, max_bytes, label)


def _folder_images(
    listing: Iterable[ObjectInfo],
    prefix: str,
    storage: Storage,
    max_bytes: int,
    labels_from_folders: bool,
) -> Iterator[InputItem]:
    for info in listing:
        relative = PurePosixPath(info.uri[len(prefix) :])
        hidden = any(part.startswith(".") for part in relative.parts)
        if not hidden and relative.suffix.lower() in IMAGE_EXTENSIONS:
            label = folder_label(info.uri) if labels_from_folders else None
            yield object_item(storage, info.uri, max_bytes, label)


def folder_label(uri: str) -> str | None:
    """The lower-cased name of the folder holding ``uri``; None at the top of a bucket.

    For a tar member (``archive.tar#REAL/x.jpg``) it is the member's folder.
    """
    archive, hash_mark, member = uri.partition("#")
    if hash_mark and archive.lower().endswith(TAR_SUFFIXES):
        return _member_label(member)
    if uri.startswith(S3_SCHEME):
        folder = PurePosixPath(parse_s3_uri(uri)[1]).parent.name
    else:
        folder = Path(uri.removeprefix(FILE_SCHEME)).absolute().parent.name
    return folder.lower() or None


# --- the worker's job inputs ---------------------------------------------------------------


def expand_job_inputs(
    inputs: JobInputs,
    storage: Storage,
    max_bytes: int,
    labels: Mapping[str, str] | None = None,
) -> Iterator[InputItem]:
    """Items for a classify job's inputs, in listing, manifest or archive order.

    Every object under a prefix counts (folder markers excepted): the worker
    reports non-images as ``unsupported_format`` rather than guessing from names.
    ``labels`` (the job's known labels by address) fill ``true_label`` where a
    manifest row does not give one.
    """
    known = labels or {}
    for item in _job_items(inputs, storage, max_bytes):
        label = item.true_label or known.get(item.uri)
        yield item if label == item.true_label else replace(item, true_label=label)


def _job_items(inputs: JobInputs, storage: Storage, max_bytes: int) -> Iterator[InputItem]:
    if isinstance(inputs, UriListInput):
        for uri in inputs.uris:
            yield object_item(storage, uri, max_bytes)
    elif isinstance(inputs, PrefixInput):
        for info in storage.list_objects(inputs.prefix):
            yield object_item(storage, info.uri, max_bytes)
    elif isinstance(inputs, ManifestInput):
        with storage.open_stream(inputs.manifest) as stream:
            for row in iter_manifest_rows(stream, inputs.manifest):
                yield object_item(storage, row.uri, max_bytes, row.label)
    elif isinstance(inputs, TarInput):
        with storage.open_stream(inputs.tar) as stream:
            yield from iter_tar_items(stream, inputs.tar, max_bytes)
    else:
        assert_never(inputs)


# --- manifests -----------------------------------------------------------------------------


def iter_manifest_rows(stream: BinaryIO, manifest_uri: str) -> Iterator[ShardItem]:
    """The rows of a manifest as ``ShardItem``, read line by line.

    JSON Lines (``{"uri": ..., "label": ...}``) or CSV (``uri[,label]``, with an
    optional ``uri,label`` header), chosen by the ending ``.jsonl``/``.ndjson``/``.csv``,
    else by the first non-blank character (``{`` means JSON Lines). UTF-8, with or
    without a byte-order mark; blank lines are skipped. Every uri must be an
    ``s3://`` address: a job may not make the worker read its own files. A
    malformed row raises ``JobRejected`` naming its line number (rows before it
    have been yielded already).
    """
    lines = _text_lines(stream, manifest_uri)
    head = _lines_to_first_content(lines)
    name = manifest_uri.lower()
    if name.endswith((".jsonl", ".ndjson")):
        as_json = True
    elif name.endswith(".csv"):
        as_json = False
    else:
        as_json = bool(head) and head[-1].lstrip().startswith("{")
    rows = _json_rows if as_json else _csv_rows
    yield from rows(itertools.chain(head, lines), manifest_uri)


def _text_lines(stream: BinaryIO, manifest_uri: str) -> Iterator[str]:
    """The stream's lines decoded, each at most ``_MAX_MANIFEST_LINE`` bytes long."""
    for number, raw in enumerate(
        iter(partial(stream.readline, _MAX_MANIFEST_LINE + 1), b""), start=1
    ):
        if len(raw) > _MAX_MANIFEST_LINE:
            raise _bad_row(manifest_uri, number, f"longer than {_MAX_MANIFEST_LINE} bytes")
        try:
            yield raw.removeprefix(codecs.BOM_UTF8 if number == 1 else b"").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad_row(manifest_uri, number, "not UTF-8 text") from exc


def _lines_to_first_content(lines: Iterator[str]) -> list[str]:
    """Lines up to and including the first non-blank one (all of them if none is)."""
    head = []
    for line in lines:
        head.append(line)
        if line.strip():
            break
    return head


def _json_rows(lines: Iterable[str], manifest_uri: str) -> Iterator[ShardItem]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad_row(manifest_uri, number, f"not JSON ({exc.msg})") from exc
        if not isinstance(fields, dict):
            raise _bad_row(manifest_uri, number, 'expected {"uri": ..., "label": ...}')
        yield _manifest_row(fields, manifest_uri, number)


def _csv_rows(lines: Iterable[str], manifest_uri: str) -> Iterator[ShardItem]:
    reader = csv.reader(lines)
    first_row = True
    try:
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            number = reader.line_num
            names = [cell.strip().lower() for cell in cells]
            is_header = first_row and names[0] == "uri"
            first_row = False
            if is_header:
                if names not in (["uri"], ["uri", "label"]):
                    raise _bad_row(manifest_uri, number, "the header must be uri or uri,label")
                continue
            if len(cells) > 2:
                raise _bad_row(
                    manifest_uri, number, f"expected uri[,label], got {len(cells)} columns"
                )
            label = cells[1].strip() if len(cells) == 2 else ""
            fields = {"uri": cells[0].strip(), "label": label or None}
            yield _manifest_row(fields, manifest_uri, number)
    except csv.Error as exc:
        raise _bad_row(manifest_uri, reader.line_num, f"not CSV ({exc})") from exc


def _manifest_row(fields: dict[str, Any], manifest_uri: str, number: int) -> ShardItem:
    try:
        row = ShardItem.from_json_value(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'row'}: {error['msg']}"
            for error in exc.errors()
        )
        raise _bad_row(manifest_uri, number, problems) from exc
    try:
        parse_s3_uri(row.uri)
    except UnsafeKey as exc:
        raise _bad_row(manifest_uri, number, exc.reason) from exc
    except ValueError as exc:
        raise _bad_row(
            manifest_uri, number, f"uri must be an s3:// address, got {row.uri!r}"
        ) from exc
    return row


def _bad_row(manifest_uri: str, number: int, reason: str) -> JobRejected:
    return JobRejected(f"manifest {manifest_uri} line {number}: {reason}")


# --- tar archives ----------------------------------------------------------------------------


def iter_tar_items(
    stream: BinaryIO, base_uri: str, max_bytes: int, labels_from_folders: bool = False
) -> Iterator[InputItem]:
    """Items for the members of a tar read as a stream, in archive order.

    A member's bytes are read as the stream passes it; a member larger than
    ``max_bytes`` is skipped over unread and its item fails ``too_large``. Every
    other file-like member (symbolic and hard links, FIFOs, character and block
    devices, unknown types) is an item too, which fails ``unsupported_member``
    without anything being read or followed: every input gets a result row.
    Directories yield nothing: they hold no image, and their files are members of
    their own. The stream may also be a slice
    of a tar that starts and ends on member-header boundaries (a ``TarSlice``).
    Compressed tars (gzip, bzip2, xz) are read too. Raises ``JobRejected`` when
    the bytes are not a tar archive or end inside a member. Headers are parsed by
    ``worker.classify.tarstream`` (``tarfile``'s rules, a fraction of its cost).
    """
    with _tar_errors(base_uri):
        for member, data in read_members(stream):
            if member.kind == "directory":
                continue
            uri = f"{base_uri}#{member.name}"
            label = _member_label(member.name) if labels_from_folders else None
            if member.regular:
                load = _read_member(data, member.size, uri, max_bytes)
            else:
                load = partial(_fail, ErrorCode.UNSUPPORTED_MEMBER, _unsupported(member))
            yield InputItem(uri, load, label, in_memory=True, size=member.size)


def tar_member_offsets(stream: BinaryIO) -> Iterator[tuple[str, int, int]]:
    """``(member name, header offset, end offset)`` of every member of an uncompressed tar.

    The header offset is where the member's first header starts (GNU long-name
    and pax headers included); the end offset is just past its data, padding
    included, i.e. where the next header starts. So the bytes from the header
    offset of member i up to the end offset of member j (i <= j) are a valid
    ``TarSlice`` for ``iter_tar_items``. Data is skipped over, never held.
    """
    with _tar_errors("the tar stream"):
        for member, _ in read_members(stream, compressed=False):
            yield member.name, member.offset, member.end


def _read_member(data: Readable, size: int, uri: str, max_bytes: int) -> Callable[[], bytes]:
    if size > max_bytes:
        too_large = ObjectTooLarge(uri, size, max_bytes)
        return partial(_fail, ErrorCode.TOO_LARGE, str(too_large))
    if size == 0:
        return partial(_fail, ErrorCode.EMPTY_FILE, f"{uri} has zero bytes")
    content = data.read()
    return lambda: content


def _unsupported(member: Member) -> str:
    pointing = f" to {member.target!r}" if member.target else ""
    return (
        f"{member.name!r} is a {member.kind}{pointing}, not a regular file; "
        "only regular files in a tar are classified (links are never followed)"
    )


def _fail(code: ErrorCode, message: str) -> bytes:
    raise ImageFailure(code, message)


def _member_label(name: str) -> str | None:
    return PurePosixPath(name).parent.name.lower() or None


@contextmanager
def _tar_errors(description: str) -> Iterator[None]:
    """Turn ``tarfile`` errors raised inside into ``JobRejected`` naming the archive."""
    try:
        yield
    except tarfile.TarError as exc:
        raise JobRejected(f"{description} is not a readable tar archive: {exc}") from exc
