"""Labelled images for training, decoded once into memory.

Images go through ``load_image_array`` with the model's own preprocessing spec,
the same function the inference pipeline uses, so a model is trained on
exactly the pixels it will later be served. Unreadable images are counted and
skipped, never fatal. Label names come from the data (sorted), optionally
renamed through ``label_aliases`` (e.g. CIFAKE's ``fake`` -> ``synthetic``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from contracts import DataSummary, Preprocessing
from worker.classify.inputs import InputItem
from worker.errors import ImageFailure
from worker.imaging import ImageLimits, PreparedImage, SourceInfo, load_image
from worker.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class LabelledImages:
    """uint8 images (N, H, W, 3), integer labels (N,), label names, their URIs, and
    (when loaded from files) each source's size and format, the model's input domain."""

    images: np.ndarray
    labels: np.ndarray
    label_names: list[str]
    uris: list[str]
    sources: list[SourceInfo] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> LabelledImages:
        return LabelledImages(
            self.images[indices],
            self.labels[indices],
            self.label_names,
            [self.uris[i] for i in indices],
            [self.sources[i] for i in indices] if self.sources else [],
        )

    def counts(self) -> dict[str, int]:
        counted = Counter(int(k) for k in self.labels)
        return {name: counted[k] for k, name in enumerate(self.label_names)}

    def manifest_sha256(self) -> str:
        """Digest of the sorted (uri, label) rows: identifies the training data exactly."""
        rows = sorted(
            f"{uri}\t{self.label_names[k]}" for uri, k in zip(self.uris, self.labels, strict=True)
        )
        return hashlib.sha256("\n".join(rows).encode()).hexdigest()


@dataclass(frozen=True)
class LoadReport:
    """What loading skipped, by URI and reason."""

    unreadable: list[tuple[str, str]]


def load_labelled_images(
    items: Iterable[InputItem],
    spec: Preprocessing,
    limits: ImageLimits,
    *,
    label_aliases: Mapping[str, str] | None = None,
    threads: int = 4,
) -> tuple[LabelledImages, LoadReport]:
    """Decode every labelled item; items without a label or that fail to decode are skipped."""
    aliases = dict(label_aliases or {})
    unreadable: list[tuple[str, str]] = []

    def decode(item: InputItem) -> tuple[str, str | None, PreparedImage | None, str | None]:
        if item.true_label is None:
            return item.uri, None, None, "no label"
        try:
            return item.uri, item.true_label, load_image(item.load(), limits, spec), None
        except ImageFailure as failure:
            return item.uri, item.true_label, None, f"{failure.code.value}: {failure.message}"

    uris: list[str] = []
    raw_labels: list[str] = []
    arrays: list[np.ndarray] = []
    sources: list[SourceInfo] = []
    with ThreadPoolExecutor(threads) as pool:
        for uri, label, prepared, problem in pool.map(decode, items):
            if prepared is None or label is None:
                unreadable.append((uri, problem or "unreadable"))
                continue
            uris.append(uri)
            raw_labels.append(aliases.get(label, label))
            arrays.append(prepared.pixels)
            sources.append(prepared.source)
    if unreadable:
        log.warning("training_images_skipped", count=len(unreadable), first=unreadable[:3])
    names = sorted(set(raw_labels))
    index = {name: k for k, name in enumerate(names)}
    h, w = spec.input_size
    images = np.stack(arrays) if arrays else np.zeros((0, h, w, 3), dtype=np.uint8)
    labels = np.array([index[name] for name in raw_labels], dtype=np.int64)
    return LabelledImages(images, labels, names, uris, sources), LoadReport(unreadable)


def data_summary(data: LabelledImages, source: str, report: LoadReport) -> DataSummary:
    """The card's record of the training data."""
    return DataSummary(
        source=source,
        manifest_sha256=data.manifest_sha256(),
        counts=data.counts(),
        unreadable=len(report.unreadable),
    )
