"""Counting results as they stream by: the numbers behind summaries and review tables."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from contracts import Counts, ErrorCode, ImageResult, ModelId


@dataclass
class ResultTally:
    """Running counts per label, per error code, and (when known) per true label."""

    total: int = 0
    by_label: Counter[str] = field(default_factory=Counter)
    by_error: Counter[ErrorCode] = field(default_factory=Counter)
    correct_by_true_label: Counter[str] = field(default_factory=Counter)
    seen_by_true_label: Counter[str] = field(default_factory=Counter)
    models: dict[ModelId, None] = field(default_factory=dict)
    out_of_domain: int = 0
    decided_by_provenance: int = 0

    def add(self, result: ImageResult) -> None:
        self.total += 1
        if result.domain is not None and result.domain.in_domain is False:
            self.out_of_domain += 1
        if result.decided_by == "provenance":
            self.decided_by_provenance += 1
        if result.model is not None:
            self.models.setdefault(result.model, None)
        if result.error is not None:
            self.by_error[result.error.code] += 1
            return
        assert result.label is not None
        self.by_label[result.label] += 1
        if result.true_label is not None:
            self.seen_by_true_label[result.true_label] += 1
            self.correct_by_true_label[result.true_label] += int(result.label == result.true_label)

    def merge(self, other: ResultTally) -> None:
        """Fold another tally in (e.g. one per shard into the job's)."""
        self.total += other.total
        self.by_label.update(other.by_label)
        self.by_error.update(other.by_error)
        self.correct_by_true_label.update(other.correct_by_true_label)
        self.seen_by_true_label.update(other.seen_by_true_label)
        self.out_of_domain += other.out_of_domain
        self.decided_by_provenance += other.decided_by_provenance
        for model in other.models:
            self.models.setdefault(model, None)

    @property
    def labelled(self) -> int:
        return sum(self.by_label.values())

    @property
    def failed(self) -> int:
        """Images without a label for a reason other than an abstention."""
        return sum(n for code, n in self.by_error.items() if code != ErrorCode.OUT_OF_DOMAIN)

    @property
    def abstained(self) -> int:
        return self.by_error[ErrorCode.OUT_OF_DOMAIN]

    def accuracy(self) -> float | None:
        """Share of images with a known true label that got it right; None if none known."""
        seen = sum(self.seen_by_true_label.values())
        return sum(self.correct_by_true_label.values()) / seen if seen else None

    def per_class_accuracy(self) -> dict[str, float]:
        return {
            label: self.correct_by_true_label[label] / n
            for label, n in sorted(self.seen_by_true_label.items())
        }

    def status(self) -> Literal["succeeded", "partial", "failed"]:
        """``succeeded`` (all labelled), ``partial`` (some), ``failed`` (none)."""
        if self.failed == 0 and self.total > 0:
            return "succeeded"
        return "partial" if self.labelled else "failed"

    def to_counts(self) -> Counts:
        return Counts(
            total=self.total,
            by_label=dict(sorted(self.by_label.items())),
            by_error=dict(sorted(self.by_error.items())),
            out_of_domain=self.out_of_domain,
            decided_by_provenance=self.decided_by_provenance,
        )
