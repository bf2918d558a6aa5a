"""How honest is a model about its domain? Coverage on dev-test and confident labels on OOD images.

    python scripts/make_ood_set.py --out .cache/ood              # once: the out-of-domain set
    python scripts/evaluate_domain.py                            # default model, policy auto
    python scripts/evaluate_domain.py --model default@1 --policy abstain --json out.json

Every image goes through the real classify pipeline (decode, provenance, batcher,
model, domain check, policy: what ``synthdetect classify`` runs), so the figures are
what a user gets:

- **coverage**: the share of ``dev-test.tar`` (CIFAKE, the training domain) that the
  domain check lets through; the target is at least 99 %;
- for each out-of-domain group of ``make_ood_set.py``, as is and squeezed to 32x32:
  the share the check flags, and the share that still gets a **confident label**
  (a label, no abstention, confidence at least ``--confident``); the target is at
  most 2 % as is. For the CIFAKE-derived groups the accuracy of the labels given too.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from contracts import ImageResult, ModelRef
from worker.classify.inputs import InputItem, expand_paths
from worker.classify.pipeline import PipelineConfig, classify_items
from worker.classify.verdict import DomainPolicy
from worker.imaging import ImageLimits
from worker.inference.engine import InferenceEngine
from worker.settings import Settings
from worker.storage import Storage

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifake"
CIFAKE_LABELS = {"fake": "synthetic"}
"""CIFAKE's folders are REAL and FAKE (lower-cased by the reader); our labels real, synthetic."""


@dataclass
class GroupFigures:
    """Counts for one group of images."""

    n: int = 0
    in_domain: int = 0
    out_of_domain: int = 0
    unknown: int = 0
    abstained: int = 0
    confident: int = 0
    labelled: int = 0
    correct: int = 0
    known_truth: int = 0
    reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, result: ImageResult, confident: float) -> None:
        self.n += 1
        state = result.domain.in_domain if result.domain is not None else None
        if state is True:
            self.in_domain += 1
        elif state is False:
            self.out_of_domain += 1
            reason = (result.domain.reason or "") if result.domain else ""
            self.reasons["size" if "far outside" in reason else "features"] += 1
        else:
            self.unknown += 1
        if result.abstained:
            self.abstained += 1
        if result.label is not None:
            self.labelled += 1
            if (result.confidence or 0.0) >= confident:
                self.confident += 1
            if result.true_label is not None:
                self.known_truth += 1
                self.correct += int(result.label == result.true_label)

    def as_dict(self) -> dict[str, object]:
        share = (lambda k: round(k / self.n, 4)) if self.n else (lambda k: 0.0)
        return {
            "n": self.n,
            "in_domain": share(self.in_domain),
            "flagged": share(self.out_of_domain),
            "flagged_by": dict(self.reasons),
            "unknown": share(self.unknown),
            "abstained": share(self.abstained),
            "confident_label": share(self.confident),
            "accuracy_of_labels": round(self.correct / self.known_truth, 4)
            if self.known_truth
            else None,
        }


def ood_items(root: Path) -> dict[str, list[InputItem]]:
    """``<mode>/<group>`` -> items; CIFAKE-derived files named ``<label>-...`` keep the label."""
    groups: dict[str, list[InputItem]] = {}
    for mode in ("as-is", "squeezed"):
        for folder in sorted((root / mode).iterdir()) if (root / mode).is_dir() else []:
            items = []
            for path in sorted(folder.iterdir()):
                label = path.name.split("-", 1)[0]
                truth = label if label in ("real", "synthetic") else None
                items.append(InputItem(str(path), path.read_bytes, truth))
            groups[f"{mode}/{folder.name}"] = items
    return groups


def run(
    items: Iterable[InputItem],
    engine: InferenceEngine,
    model: ModelRef,
    limits: ImageLimits,
    config: PipelineConfig,
    confident: float,
) -> GroupFigures:
    figures = GroupFigures()
    for result in classify_items(items, engine, model, limits, config):
        figures.add(result, confident)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--registry", default="")
    parser.add_argument("--test-tar", type=Path, default=DATA / "dev-test.tar")
    parser.add_argument("--ood", type=Path, default=Path(".cache/ood"))
    parser.add_argument("--policy", choices=["auto", "flag", "abstain"], default="auto")
    parser.add_argument("--confident", type=float, default=0.9)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    settings = Settings(model_registry=args.registry, domain_policy=args.policy)
    storage = Storage.from_settings(settings)
    engine = InferenceEngine.from_settings(settings, storage)
    limits = ImageLimits.from_settings(settings)
    config = PipelineConfig.from_settings(settings)
    config = PipelineConfig(
        config.fetch_concurrency,
        config.decode_threads,
        config.window,
        DomainPolicy(args.policy),
        config.provenance,
        config.trust_anchors,
    )
    model = ModelRef.parse(args.model)
    loaded = engine.model_for(model)
    report: dict[str, object] = {"model": f"{loaded.card.name}@{loaded.card.version}"}
    try:
        test = expand_paths(
            [str(args.test_tar)], storage, settings.max_image_bytes, labels_from_folders=True
        )
        renamed = (
            InputItem(i.uri, i.load, CIFAKE_LABELS.get(i.true_label or "", i.true_label))
            for i in test
        )
        figures = {"dev-test": run(renamed, engine, model, limits, config, args.confident)}
        for group, items in ood_items(args.ood).items():
            figures[group] = run(items, engine, model, limits, config, args.confident)
    finally:
        engine.close()
    report |= {name: f.as_dict() for name, f in figures.items()}
    totals = {}
    for mode in ("as-is", "squeezed"):
        for scope, kinds in (("all", None), ("photos+renders", ("photos", "renders"))):
            chosen = [
                f
                for name, f in figures.items()
                if name.startswith(mode + "/") and (kinds is None or name.split("/")[1] in kinds)
            ]
            n = sum(f.n for f in chosen)
            if n:
                totals[f"{mode} {scope}"] = {
                    "n": n,
                    "flagged": round(sum(f.out_of_domain for f in chosen) / n, 4),
                    "confident_label": round(sum(f.confident for f in chosen) / n, 4),
                }
    report["ood_totals"] = totals
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
