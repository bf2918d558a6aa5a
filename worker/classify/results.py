"""What a job leaves in the results bucket, and how its summary is assembled.

::

    <output.uri>/<job_id>/job.json                    the job as accepted, and its shard count
    <output.uri>/<job_id>/parts/part-00000.jsonl      ImageResults of shard 0, one per line
    <output.uri>/<job_id>/parts/part-00000.done.json  shard 0's counts and timings
    <output.uri>/<job_id>/finalize.claim              which shard finalises the job
    <output.uri>/<job_id>/summary.json                the JobSummary
    <output.uri>/<job_id>/delivery.json               callback attempts
    <output.uri>/<job_id>/delivery/attempt-00001.claim  who makes callback attempt 1
    s3://<bucket>/_synthdetect/pending-callbacks/<id>.json  a callback is owed (swept)

Every write replaces a whole object, so a redelivered shard overwrites its own
part and marker instead of appending duplicates. A part is written before its
marker: a marker always describes a complete part. The shard that finds every
marker present claims ``finalize.claim`` with a conditional PUT (exactly one
claim wins); the claim names the shard, so when the winner dies before the
summary is written, its redelivered message recognises its own claim and
finishes the job.

A shard that gave up (``worker.classify.runner.give_up_shard``) writes a part and
a marker like any other, with a ``ShardFailure`` in the marker: the job counts
it as finished, and its summary lists the failure.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Self

from pydantic import AwareDatetime, BaseModel, ConfigDict

from contracts import (
    ClassifyJob,
    Counts,
    ImageResult,
    JobSummary,
    ModelId,
    ShardFailure,
    Timings,
)
from worker.classify.tally import ResultTally
from worker.errors import ObjectNotFound
from worker.storage import S3_SCHEME, Storage, join_uri, parse_s3_uri

JSON = "application/json"
JSON_LINES = "application/x-ndjson"
_DONE_NAME = re.compile(r"part-(\d{5,})\.done\.json$")


@dataclass(frozen=True)
class RecordLayout:
    """Where a job keeps its records: ``<root>/<job_id>/{job,summary,delivery}.json``.

    Classify jobs keep them under their output URI, retrain jobs next to the model.
    """

    base: str

    @classmethod
    def of(cls, root: str, job_id: str) -> Self:
        return cls(join_uri(root, job_id))

    @property
    def job(self) -> str:
        return join_uri(self.base, "job.json")

    @property
    def summary(self) -> str:
        return join_uri(self.base, "summary.json")

    @property
    def delivery(self) -> str:
        return join_uri(self.base, "delivery.json")

    @property
    def delivery_claims(self) -> str:
        """Prefix of the callback attempt claims (``worker.webhooks.attempts``)."""
        return join_uri(self.base, "delivery") + "/"


@dataclass(frozen=True)
class JobLayout(RecordLayout):
    """A classify job's records plus its result parts, done markers and finalise claim."""

    @property
    def parts_prefix(self) -> str:
        return join_uri(self.base, "parts") + "/"

    def part(self, index: int) -> str:
        return join_uri(self.base, "parts", f"part-{index:05d}.jsonl")

    def done(self, index: int) -> str:
        return join_uri(self.base, "parts", f"part-{index:05d}.done.json")

    @property
    def claim(self) -> str:
        return join_uri(self.base, "finalize.claim")

    @property
    def pending(self) -> str:
        """The owed-callback marker: at the results bucket's root, where a sweeper finds it."""
        return pending_marker_uri(self.base)


PENDING_PREFIX = "_synthdetect/pending-callbacks/"
"""Where owed-callback markers live in a results bucket (``worker.classify.owed``)."""


def pending_root(uri: str) -> str:
    """The pending-callbacks folder for the job folder ``uri``: its bucket's root on S3,
    the output folder (the job folder's parent) elsewhere."""
    if uri.startswith(S3_SCHEME):
        bucket, _ = parse_s3_uri(uri)
        return f"{S3_SCHEME}{bucket}/{PENDING_PREFIX}"
    return join_uri(uri.rstrip("/").rsplit("/", 1)[0], PENDING_PREFIX) + "/"


def pending_marker_uri(job_base: str) -> str:
    """A marker name unique per job folder (the same job id may be used under other prefixes)."""
    digest = hashlib.sha256(job_base.encode()).hexdigest()[:16]
    job_id = job_base.rstrip("/").rsplit("/", 1)[-1]
    return f"{pending_root(job_base)}{digest}-{job_id[:100]}.json"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobRecord(_Record):
    """``job.json``: the job as accepted (the finaliser reads its callback from here)."""

    job: ClassifyJob
    shards: int
    accepted_at: AwareDatetime


class ShardDone(_Record):
    """``part-NNNNN.done.json``: a finished shard's tally and timings."""

    index: int
    counts: Counts
    models: list[ModelId]
    started_at: AwareDatetime
    finished_at: AwareDatetime
    error: str | None = None
    failure: ShardFailure | None = None
    """Set when the shard gave up (its images without a result are listed with an error)."""


def write_job_record(storage: Storage, layout: JobLayout, record: JobRecord) -> None:
    storage.put_bytes(layout.job, record.model_dump_json().encode(), JSON)


def read_job_record(storage: Storage, layout: JobLayout) -> JobRecord | None:
    try:
        return JobRecord.model_validate_json(storage.get_bytes(layout.job))
    except ObjectNotFound:
        return None


def write_shard_results(
    storage: Storage,
    layout: JobLayout,
    index: int,
    results: list[ImageResult],
    started_at: datetime,
    error: str | None = None,
    failure: ShardFailure | None = None,
) -> ShardDone:
    """Replace the shard's part, then its done marker; returns the marker."""
    tally = ResultTally()
    lines = []
    for result in results:
        tally.add(result)
        lines.append(result.model_dump_json(exclude_none=True))
    storage.put_bytes(
        layout.part(index), "".join(f"{line}\n" for line in lines).encode(), JSON_LINES
    )
    done = ShardDone(
        index=index,
        counts=tally.to_counts(),
        models=list(tally.models),
        started_at=started_at,
        finished_at=datetime.now(UTC),
        error=error,
        failure=failure,
    )
    storage.put_bytes(layout.done(index), done.model_dump_json().encode(), JSON)
    return done


def done_shards(storage: Storage, layout: JobLayout) -> set[int]:
    """Indexes of the shards whose done marker exists (one listing, paged)."""
    found = set()
    for info in storage.list_objects(layout.parts_prefix):
        match = _DONE_NAME.search(info.uri)
        if match:
            found.add(int(match.group(1)))
    return found


def claim_finalize(storage: Storage, layout: JobLayout, shard_index: int) -> bool:
    """True for exactly one shard of the job, and again for that shard if it is redelivered."""
    token = json.dumps({"shard": shard_index}).encode()
    if storage.put_if_absent(layout.claim, token, JSON):
        return True
    try:
        return storage.get_bytes(layout.claim) == token
    except ObjectNotFound:
        return False


def read_summary(storage: Storage, layout: JobLayout) -> JobSummary | None:
    try:
        return JobSummary.model_validate_json(storage.get_bytes(layout.summary))
    except ObjectNotFound:
        return None


def assemble_summary(markers: list[ShardDone], record: JobRecord, layout: JobLayout) -> JobSummary:
    """The job's summary from every shard's marker (in shard order)."""
    total = ResultTally()
    models: dict[ModelId, None] = {}
    for marker in markers:
        total.total += marker.counts.total
        total.by_label.update(marker.counts.by_label)
        total.by_error.update(marker.counts.by_error)
        total.out_of_domain += marker.counts.out_of_domain
        total.decided_by_provenance += marker.counts.decided_by_provenance
        models.update(dict.fromkeys(marker.models))
    errors = [f"shard {m.index}: {m.error}" for m in markers if m.error]
    if total.total == 0 and not errors:
        errors.append("the inputs hold no images")
    status = total.status()
    if errors and status == "succeeded":
        status = "partial"
    started = min([record.accepted_at, *(m.started_at for m in markers)])
    finished = max(m.finished_at for m in markers)
    duration = max((finished - started).total_seconds(), 0.0)
    return JobSummary(
        job_id=record.job.job_id,
        status=status,
        models=list(models),
        counts=total.to_counts(),
        timings=Timings(
            submitted_at=record.job.submitted_at,
            started_at=started,
            finished_at=finished,
            duration_s=duration,
            images_per_s=total.total / duration if duration > 0 else 0.0,
        ),
        shards=record.shards,
        parts=[layout.part(i) for i in range(record.shards)],
        summary_uri=layout.summary,
        error="; ".join(errors) or None,
        failed_shards=[m.failure for m in markers if m.failure] or None,
    )


def finalize_summary(storage: Storage, layout: JobLayout, record: JobRecord) -> JobSummary:
    """Read every marker, assemble the summary and write ``summary.json``."""
    markers = [
        ShardDone.model_validate_json(storage.get_bytes(layout.done(i)))
        for i in range(record.shards)
    ]
    summary = assemble_summary(markers, record, layout)
    storage.put_bytes(layout.summary, summary.model_dump_json(exclude_none=True).encode(), JSON)
    return summary


def read_results(storage: Storage, layout: JobLayout, shards: int) -> list[ImageResult]:
    """Every ImageResult of the job, in order (for small jobs' inline callbacks)."""
    results = []
    for index in range(shards):
        for line in storage.get_bytes(layout.part(index)).splitlines():
            if line.strip():
                results.append(ImageResult.model_validate_json(line))
    return results
