"""The machine's limits, each stage alone and plain: what the worker is compared with.

- ``model_rate``: the model on uint8 batches (no I/O), at its best batch and threading;
- ``decode_rate``: decode + preprocess of the same JPEG bytes, one thread per core;
- ``get_rate``: S3 GETs of the same objects with plain clients and a thread pool;
- ``plain_pipeline_rate``: a 30-line loop, decode (and GET) in a thread pool, batches of
  64 through the model: the stages combined on this machine's cores.

None of these use the worker's pipeline code: they are what a competent engineer
would write in an afternoon, and the worker must come close to them.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from contracts import ModelRef, Preprocessing
from scripts.dev_s3 import DEV_ACCESS_KEY_ID, DEV_REGION, DEV_SECRET_ACCESS_KEY
from worker.imaging import ImageLimits, load_image_array
from worker.inference.model import LoadedModel
from worker.inference.provider import ModelProvider
from worker.inference.registry import ModelRegistry
from worker.settings import Settings
from worker.storage import S3Store, Storage

CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class Rate:
    """Images (or objects) per second, and how it was reached."""

    per_s: float
    how: str


def load_default_model(threads: int = 0) -> LoadedModel:
    settings = Settings(device="cpu")
    torch.set_num_threads(threads or CORES)
    storage = Storage.from_settings(settings)
    provider = ModelProvider(ModelRegistry.from_settings(settings, storage), torch.device("cpu"))
    return provider.get(ModelRef())


def _timed_loop(work: Callable[[], int], seconds: float, callers: int) -> float:
    """Items per second when ``callers`` threads call ``work`` (returns items done) for a while."""
    done = [0] * callers
    stop = time.perf_counter() + seconds

    def loop(index: int) -> None:
        while time.perf_counter() < stop:
            done[index] += work()

    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


def model_rate(model: LoadedModel, seconds: float, batches: Sequence[int] = (32, 64, 128)) -> Rate:
    """The best images/s over batch sizes and over two threadings: one caller using every
    core through torch's intra-op threads, or one caller per core with one torch thread."""
    best = Rate(0.0, "")
    rng = np.random.default_rng(0)
    for callers, torch_threads in ((1, CORES), (CORES, 1)):
        torch.set_num_threads(torch_threads)
        for batch in batches:
            images = rng.integers(0, 256, (batch, *model.input_shape), dtype=np.uint8)
            model.predict_proba(images)  # warm-up for this shape

            def run(images: npt.NDArray[np.uint8] = images) -> int:
                model.predict_proba(images)
                return len(images)

            rate = _timed_loop(run, seconds, callers)
            if rate > best.per_s:
                how = f"batch {batch}, {callers} caller(s) x {torch_threads} torch thread(s)"
                best = Rate(rate, how)
    torch.set_num_threads(CORES)
    return best


def decode_rate(
    images: Sequence[bytes], spec: Preprocessing, limits: ImageLimits, seconds: float
) -> Rate:
    """decode + preprocess with the worker's imaging code, one thread per core."""
    cursor = iter(range(10**12))
    lock = threading.Lock()

    def run() -> int:
        with lock:
            start = next(cursor) * 16
        for i in range(start, start + 16):
            load_image_array(images[i % len(images)], limits, spec)
        return 16

    return Rate(_timed_loop(run, seconds, CORES), f"synthdetect imaging, {CORES} threads")


def pillow_draft_rate(images: Sequence[bytes], size: tuple[int, int], seconds: float) -> Rate:
    """Pillow alone: open, DCT-scaled decode (``draft``) to at least ``size``, RGB array."""
    cursor = iter(range(10**12))
    lock = threading.Lock()

    def run() -> int:
        with lock:
            index = next(cursor)
        image = Image.open(io.BytesIO(images[index % len(images)]))
        image.draft("RGB", size)
        np.asarray(image.convert("RGB"))
        return 1

    return Rate(_timed_loop(run, seconds, CORES), f"Pillow draft(), {CORES} threads")


# --- S3 GETs ---------------------------------------------------------------------------------


def boto3_get_rate(settings: Settings, uris: Sequence[str], threads: int) -> Rate:
    """Plain boto3 ``get_object`` in a thread pool (one shared client)."""
    client = S3Store.from_settings(settings).client

    def get(uri: str) -> int:
        bucket, _, key = uri[5:].partition("/")
        return len(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(get, uris))
    return Rate(len(uris) / (time.perf_counter() - started), f"boto3, {threads} threads")


def obstore_get_rate(settings: Settings, uris: Sequence[str], threads: int) -> Rate:
    """obstore (Rust object_store) ``get`` in a thread pool: it releases the GIL."""
    import obstore
    from obstore.store import S3Store as ObjectStoreS3

    bucket = uris[0][5:].partition("/")[0]
    store = ObjectStoreS3(
        bucket,
        endpoint=settings.s3_endpoint_url,
        region=DEV_REGION,
        access_key_id=DEV_ACCESS_KEY_ID,
        secret_access_key=DEV_SECRET_ACCESS_KEY,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )

    def get(uri: str) -> int:
        return len(obstore.get(store, uri[5:].partition("/")[2]).bytes())

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(get, uris))
    return Rate(len(uris) / (time.perf_counter() - started), f"obstore, {threads} threads")


def worker_get_rate(settings: Settings, uris: Sequence[str], threads: int) -> Rate:
    """The worker's own ``Storage.get_bytes`` (whatever client it uses) in a thread pool."""
    storage = Storage.from_settings(settings)
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(storage.get_bytes, uris))
    return Rate(len(uris) / (time.perf_counter() - started), f"worker storage, {threads} threads")


# --- the stages combined -----------------------------------------------------------------------


def plain_pipeline_rate(
    model: LoadedModel,
    load: Callable[[int], bytes],
    count: int,
    spec: Preprocessing,
    limits: ImageLimits,
    threads: int = CORES,
    batch: int = 64,
) -> Rate:
    """The better of ``plain_loop_rate`` with torch on every core and on one thread (the
    decode threads then keep the other cores: intra-op threads spin while they decode)."""
    best = Rate(0.0, "")
    for torch_threads in (CORES, 1):
        torch.set_num_threads(torch_threads)
        rate = plain_loop_rate(model, load, count, spec, limits, threads, batch)
        if rate.per_s > best.per_s:
            best = Rate(rate.per_s, f"{rate.how}, {torch_threads} torch thread(s)")
    torch.set_num_threads(CORES)
    return best


def plain_loop_rate(
    model: LoadedModel,
    load: Callable[[int], bytes],
    count: int,
    spec: Preprocessing,
    limits: ImageLimits,
    threads: int,
    batch: int = 64,
) -> Rate:
    """``count`` images: ``load(i)`` then decode in ``threads`` threads, batches through the model.

    ``load`` is a GET for objects or a list lookup for bytes already in memory.
    """

    def prepare(index: int) -> npt.NDArray[np.uint8]:
        return load_image_array(load(index), limits, spec)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        pending: list[npt.NDArray[np.uint8]] = []
        for pixels in pool.map(prepare, range(count)):
            pending.append(pixels)
            if len(pending) == batch:
                model.predict(np.stack(pending))
                pending.clear()
        if pending:
            model.predict(np.stack(pending))
    return Rate(count / (time.perf_counter() - started), f"{threads} threads, batch {batch}")
