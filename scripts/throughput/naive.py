"""The naive baseline: one Celery task per image, no batching, the model loaded once per process.

What a first version of such a service looks like: ``celery -A scripts.throughput.naive
worker`` (prefork, one process per core), each task GETs one object with boto3,
decodes it with Pillow, scores it alone and PUTs a one-line result next to it.
The benchmark sends one task per image and counts the results.
"""

from __future__ import annotations

import io
import json
import os
from functools import cache

import boto3
import numpy as np
from botocore.config import Config
from celery import Celery
from PIL import Image

from contracts import ModelRef
from worker.inference.model import LoadedModel

BROKER_URL = os.environ.get("NAIVE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = os.environ.get("NAIVE_QUEUE", "naive-baseline")
TASK = "naive.classify_one"

app = Celery("naive", broker=BROKER_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=4,
    worker_hijack_root_logger=False,
)


@cache
def _model() -> LoadedModel:
    import torch

    from worker.inference.provider import ModelProvider
    from worker.inference.registry import ModelRegistry
    from worker.settings import Settings
    from worker.storage import Storage

    torch.set_num_threads(1)
    settings = Settings(device="cpu")
    provider = ModelProvider(
        ModelRegistry.from_settings(settings, Storage.from_settings(settings)),
        torch.device("cpu"),
    )
    return provider.get(ModelRef())


@cache
def _s3() -> object:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=os.environ["NAIVE_S3_ENDPOINT"],
        config=Config(s3={"addressing_style": "path"}),
    )


@app.task(name=TASK)
def classify_one(uri: str, result_key: str) -> None:
    """GET, decode, score alone, PUT the result."""
    client = _s3()
    bucket, _, key = uri[5:].partition("/")
    data = client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32))
    model = _model()
    probs = model.predict_proba(np.asarray(image, dtype=np.uint8)[None])[0]
    label = model.card.labels[int(probs.argmax())]
    body = json.dumps({"uri": uri, "label": label, "confidence": float(probs.max())})
    client.put_object(Bucket=bucket, Key=result_key, Body=body.encode())  # type: ignore[attr-defined]
