"""The compose stack's one-shot producer: upload sample images, submit a job, wait for it.

    python deploy/examples/sample_job.py --images tests/data/cifake-sample --bucket demo

Settings (broker, S3 endpoint, registry) come from the usual ``SYNTHDETECT_*`` and
``AWS_*`` variables, as for a worker. It creates the bucket (and the model registry's
bucket, which the retrain worker publishes to) if missing, uploads every image under
``--images`` to ``s3://<bucket>/sample/<folder>/<file>``, submits one ClassifyJob for
that prefix, waits for ``summary.json`` and prints it. Exit status 0 when the job
succeeded.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from botocore.exceptions import ClientError

from contracts import ClassifyJob
from worker.queue.producer import submit_job, wait_for_summary
from worker.settings import get_settings
from worker.storage import S3Store, Storage, parse_s3_uri

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def ensure_bucket(client: object, bucket: str) -> None:
    try:
        client.head_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    except ClientError:
        client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of images")
    parser.add_argument("--bucket", required=True, help="bucket for images and results")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for results")
    args = parser.parse_args(argv)
    settings = get_settings()
    client = S3Store.from_settings(settings).client
    ensure_bucket(client, args.bucket)
    if settings.model_registry.startswith("s3://"):
        ensure_bucket(client, parse_s3_uri(settings.model_registry)[0])

    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        print(f"no images under {args.images}", file=sys.stderr)
        return 2

    def upload(path: Path) -> None:
        key = f"sample/{path.relative_to(args.images).as_posix()}"
        client.put_object(Bucket=args.bucket, Key=key, Body=path.read_bytes())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, files))
    job = ClassifyJob.model_validate(
        {
            "job_id": f"sample-{uuid.uuid4().hex[:12]}",
            "inputs": {"kind": "prefix", "prefix": f"s3://{args.bucket}/sample/"},
            "output": {"uri": f"s3://{args.bucket}/results"},
        }
    )
    submit_job(job, settings)
    print(f"uploaded {len(files)} images, submitted {job.job_id}", file=sys.stderr)
    summary = wait_for_summary(job, Storage.from_settings(settings), args.timeout)
    if summary is None:
        print(f"no summary for {job.job_id} after {args.timeout:.0f} s", file=sys.stderr)
        return 1
    print(summary.model_dump_json(indent=2))
    return 0 if summary.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
