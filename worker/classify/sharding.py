"""Cutting a ``ClassifyJob`` into ``ClassifyShard`` messages of at most ``shard_size`` images.

A shard is the unit of redelivery, so its size bounds how long one message is
held: at CPU speed (~1,000 small images/s) the default 2,000 images take seconds,
at worst minutes for large photos, far inside RabbitMQ's 30-minute consumer
timeout and the SQS visibility timeout.

- URI lists, prefixes and manifests become shards that list their items
  (a prefix is listed page by page and a manifest read line by line, once);
- an uncompressed tar becomes byte ranges cut on member-header boundaries
  (``TarSlice``), found by streaming the archive's headers once, so a shard
  reads only its own part of the archive;
- a compressed tar cannot be cut and is one shard.

The split is deterministic for unchanged inputs, so a redelivered job produces
the same shards and finished ones can be skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import TypeVar

from contracts import (
    ClassifyJob,
    ClassifyShard,
    ManifestInput,
    PrefixInput,
    ShardItem,
    TarInput,
    TarSlice,
    UriListInput,
)
from worker.classify.inputs import iter_manifest_rows, tar_member_offsets
from worker.errors import JobRejected, ObjectNotFound
from worker.storage import Storage

_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")

T = TypeVar("T")


def batched(values: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` values (the last may be shorter); ``itertools.batched``
    arrives only in Python 3.12."""
    iterator = iter(values)
    while chunk := list(islice(iterator, size)):
        yield chunk


def plan_shards(
    job: ClassifyJob, storage: Storage, shard_size: int, max_images: int
) -> list[ClassifyShard]:
    """Every shard of ``job``, in input order (at least one, possibly with no items).

    Raises ``JobRejected`` when the job has more than ``max_images`` images, and
    ``StorageError`` when a listing or read fails: transient errors are retried by the
    caller; permanent ones (a manifest or tar that does not exist is ``ObjectNotFound``)
    end the job with a ``failed`` summary naming the input, and its callback, rather
    than a silent dead letter the producer never hears about.
    """
    inputs = job.inputs
    pieces: list[tuple[list[ShardItem] | None, TarSlice | None]]
    if isinstance(inputs, TarInput):
        # Each shard carries either its items or its tar slice.
        slices = _tar_slices(inputs.tar, storage, shard_size, max_images)
        pieces = [(None, piece) for piece in slices]
    else:
        items = _count_checked(_shard_items(job, storage), max_images)
        pieces = [(chunk, None) for chunk in batched(items, shard_size)]
    pieces = pieces or [([], None)]
    return [
        ClassifyShard(
            job_id=job.job_id,
            model=job.model,
            output=job.output,
            priority=job.priority,
            index=index,
            count=len(pieces),
            items=shard_items,
            tar_slice=tar_slice,
        )
        for index, (shard_items, tar_slice) in enumerate(pieces)
    ]


def _shard_items(job: ClassifyJob, storage: Storage) -> Iterator[ShardItem]:
    known: Mapping[str, str] = job.labels or {}
    inputs = job.inputs
    if isinstance(inputs, UriListInput):
        for uri in inputs.uris:
            yield ShardItem(uri=uri, label=known.get(uri))
    elif isinstance(inputs, PrefixInput):
        for info in storage.list_objects(inputs.prefix):
            yield ShardItem(uri=info.uri, label=known.get(info.uri))
    elif isinstance(inputs, ManifestInput):
        with storage.open_stream(inputs.manifest) as stream:
            for row in iter_manifest_rows(stream, inputs.manifest):
                yield row if row.label else ShardItem(uri=row.uri, label=known.get(row.uri))


def _count_checked(items: Iterator[ShardItem], max_images: int) -> Iterator[ShardItem]:
    for count, item in enumerate(items, start=1):
        if count > max_images:
            raise JobRejected(f"oversize: the job has more than {max_images} images")
        yield item


def _tar_slices(uri: str, storage: Storage, shard_size: int, max_images: int) -> list[TarSlice]:
    with storage.open_stream(uri, 0, 6) as head:
        magic = head.read(6)
    if magic.startswith(_COMPRESSED_MAGIC):
        return [TarSlice(uri=uri, start=0, end=_object_size(uri, storage))]
    slices = []
    with storage.open_stream(uri) as stream:
        offsets = tar_member_offsets(stream)
        for count, chunk in enumerate(batched(offsets, shard_size), start=1):
            if (count - 1) * shard_size + len(chunk) > max_images:
                raise JobRejected(f"oversize: the tar has more than {max_images} members")
            slices.append(TarSlice(uri=uri, start=chunk[0][1], end=chunk[-1][2]))
    return slices


def _object_size(uri: str, storage: Storage) -> int:
    for info in storage.list_objects(uri):
        if info.uri == uri:
            return info.size
    raise ObjectNotFound(f"no object at {uri}")
