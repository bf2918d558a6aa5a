"""Loaded models for a process, following aliases so promotions take effect live.

``get`` is called once per image before preprocessing, and the image then
carries that ``LoadedModel`` through the batcher. A model is therefore swapped
between images, never inside one: an image preprocessed for version 3 is scored
by version 3 even if the alias moves to 4 meanwhile, and a new version serves
traffic only after it loaded, verified and warmed up completely.

A version the alias moved to but that fails to load (checksum mismatch, a file
that is not TorchScript, files that cannot be read) never takes traffic: images
for the alias keep going to the version that served it before, the failure is
logged, and the load is tried again after ``load_retry_s``. A pinned version
that fails to load fails its own job, as it has nothing to fall back to.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import torch

from contracts import ModelId, ModelRef
from worker.errors import ModelError, StorageError, SynthdetectError
from worker.inference.model import LoadedModel, load_model
from worker.inference.registry import ModelRegistry
from worker.logs import get_logger
from worker.metrics import record_model_serving

log = get_logger(__name__)


class ModelProvider:
    """Thread-safe cache of loaded models plus alias resolution with a short TTL."""

    def __init__(
        self,
        registry: ModelRegistry,
        device: torch.device,
        *,
        autocast_dtype: torch.dtype | None = None,
        alias_ttl_s: float = 5.0,
        max_loaded: int = 4,
        load_retry_s: float = 30.0,
    ) -> None:
        self.registry = registry
        self.device = device
        self._autocast_dtype = autocast_dtype
        self._alias_ttl_s = alias_ttl_s
        self._max_loaded = max_loaded
        self._load_retry_s = load_retry_s
        self._loaded: OrderedDict[ModelId, LoadedModel] = OrderedDict()
        self._aliases: dict[str, tuple[ModelId, float]] = {}
        self._serving: dict[str, ModelId] = {}
        """The last alias target that loaded, by model name: the fallback."""
        self._failed: dict[ModelId, tuple[float, SynthdetectError]] = {}
        """Versions whose last load failed, when, and why (not retried before load_retry_s)."""
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    def get(self, ref: ModelRef) -> LoadedModel:
        """The model that should score the next image for ``ref``.

        Raises ``ModelError`` when a pinned version, or an alias that never had
        a loadable target in this process, cannot be loaded.
        """
        if ref.version is not None:
            return self._get_loaded(ModelId(name=ref.name, version=ref.version))
        target = self.resolve(ref)
        try:
            loaded = self._get_loaded(target)
        except (ModelError, StorageError):
            with self._lock:
                fallback = self._serving.get(ref.name)
            if fallback is None or fallback == target:
                raise
            return self._get_loaded(fallback)
        with self._lock:
            previous = self._serving.get(ref.name)
            self._serving[ref.name] = target
        if previous != target:
            record_model_serving(ref.name, target.version, previous.version if previous else None)
        return loaded

    def serving(self, name: str) -> ModelId | None:
        """The version that last served ``name``'s alias in this process (None before any)."""
        with self._lock:
            return self._serving.get(name)

    def resolve(self, ref: ModelRef) -> ModelId:
        """A pinned version as is; an alias from cache if younger than the TTL.

        When the alias cannot be read (storage trouble) the cached target stays
        in use for another TTL, so a registry hiccup never fails images.
        """
        if ref.version is not None:
            return ModelId(name=ref.name, version=ref.version)
        now = time.monotonic()
        with self._lock:
            cached = self._aliases.get(ref.name)
        if cached is not None and now - cached[1] < self._alias_ttl_s:
            return cached[0]
        try:
            resolved = self.registry.resolve(ref)
        except (ModelError, StorageError) as exc:
            if cached is None:
                raise
            log.warning(
                "model_alias_unreadable", model=ref.name, serving=cached[0].version, error=str(exc)
            )
            resolved = cached[0]
        with self._lock:
            previous = self._aliases.get(ref.name)
            self._aliases[ref.name] = (resolved, now)
        if previous is not None and previous[0] != resolved:
            log.info(
                "model_alias_moved", model=ref.name, old=previous[0].version, new=resolved.version
            )
        return resolved

    def _get_loaded(self, model_id: ModelId) -> LoadedModel:
        with self._lock:
            loaded = self._loaded.get(model_id)
            if loaded is not None:
                self._loaded.move_to_end(model_id)
                return loaded
        # One load at a time: a burst of requests for a new version loads it once.
        with self._load_lock:
            with self._lock:
                loaded = self._loaded.get(model_id)
            if loaded is None:
                loaded = self._load(model_id)
            with self._lock:
                self._loaded[model_id] = loaded
                self._loaded.move_to_end(model_id)
                while len(self._loaded) > self._max_loaded:
                    # Images in flight keep their own reference; eviction only drops ours.
                    self._loaded.popitem(last=False)
            return loaded

    def _load(self, model_id: ModelId) -> LoadedModel:
        """Read, verify and warm up one version (caller holds ``_load_lock``)."""
        now = time.monotonic()
        failed = self._failed.get(model_id)
        if failed is not None and now - failed[0] < self._load_retry_s:
            raise failed[1]
        try:
            card, data = self.registry.read_model(model_id)
            loaded = load_model(card, data, self.device, self._autocast_dtype)
        except (ModelError, StorageError) as exc:
            self._failed[model_id] = (now, exc)
            log.error(
                "model_load_failed",
                model=model_id.name,
                version=model_id.version,
                error=str(exc),
                retry_in_s=self._load_retry_s,
            )
            raise
        self._failed.pop(model_id, None)
        log.info(
            "model_loaded",
            model=model_id.name,
            version=model_id.version,
            device=str(self.device),
            load_ms=round((time.monotonic() - now) * 1e3),
        )
        return loaded
