"""Training data and trained artifacts: decoding a labelled set (skipping what cannot be
used), its manifest digest and summary, and TorchScript export checked against the serving
loader (same logits, checksum enforced)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from contracts import Calibration, ErrorCode, ModelCard, Preprocessing
from tests.support.toy_images import bright_and_dark, png_bytes
from worker.classify.inputs import InputItem
from worker.errors import ChecksumMismatch, ImageFailure, ModelError
from worker.imaging import ImageLimits
from worker.inference.model import load_model
from worker.retrain.training.dataset import (
    LabelledImages,
    LoadReport,
    data_summary,
    load_labelled_images,
)
from worker.retrain.training.export import build_card, export_torchscript
from worker.retrain.training.loop import Normalisation, TrainConfig, train_classifier
from worker.retrain.training.nets import SynthNet, SynthNetSpec, count_parameters
from worker.review.evaluation import softmax

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
TINY = SynthNetSpec(widths=(16,), blocks=(1,))
LABELS = ["real", "synthetic"]
SPEC = Preprocessing(input_size=(8, 8))
LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=1_000_000, allowed_formats=frozenset({"PNG"}))


def item(uri: str, data: bytes, label: str | None) -> InputItem:
    return InputItem(uri, lambda: data, label)


# --- the training set ----------------------------------------------------------------


def failing_load() -> bytes:
    raise ImageFailure(ErrorCode.NOT_FOUND, "no such object")


def test_load_labelled_images_decodes_labelled_items_and_reports_the_rest() -> None:
    (dark, bright), _ = bright_and_dark(2)
    items = [
        item("s3://d/synthetic/1.png", png_bytes(bright), "synthetic"),
        item("s3://d/real/2.png", png_bytes(dark), "real"),
        item("s3://d/fake/3.png", png_bytes(bright), "fake"),
        item("s3://d/unlabelled.png", png_bytes(dark), None),
        InputItem("s3://d/real/missing.png", failing_load, "real"),
        item("s3://d/real/garbage.png", b"this is not an image", "real"),
    ]
    data, report = load_labelled_images(items, SPEC, LIMITS, label_aliases={"fake": "synthetic"})
    assert data.label_names == ["real", "synthetic"]  # sorted, whatever came first
    assert data.uris == ["s3://d/synthetic/1.png", "s3://d/real/2.png", "s3://d/fake/3.png"]
    assert data.labels.tolist() == [1, 0, 1]
    assert data.images.shape == (3, 8, 8, 3)
    assert data.images.dtype == np.uint8
    assert np.array_equal(data.images[1], dark)
    assert data.counts() == {"real": 1, "synthetic": 2}
    skipped = dict(report.unreadable)
    assert set(skipped) == {
        "s3://d/unlabelled.png",
        "s3://d/real/missing.png",
        "s3://d/real/garbage.png",
    }
    assert skipped["s3://d/unlabelled.png"] == "no label"
    assert skipped["s3://d/real/missing.png"] == "not_found: no such object"
    assert skipped["s3://d/real/garbage.png"].split(":")[0] in {
        ErrorCode.UNSUPPORTED_FORMAT.value,
        ErrorCode.CORRUPT_IMAGE.value,
    }


def test_load_labelled_images_of_nothing_is_empty() -> None:
    data, report = load_labelled_images([], SPEC, LIMITS)
    assert len(data) == 0
    assert data.images.shape == (0, 8, 8, 3)
    assert report.unreadable == []


def labelled(uris: list[str], labels: list[int], names: list[str]) -> LabelledImages:
    images = np.zeros((len(uris), 8, 8, 3), dtype=np.uint8)
    return LabelledImages(images, np.array(labels), names, uris)


def test_the_manifest_digest_names_the_rows_not_their_order() -> None:
    data = labelled(["a", "b", "c"], [0, 1, 0], LABELS)
    digest = data.manifest_sha256()
    assert data.subset(np.array([2, 0, 1])).manifest_sha256() == digest
    # the same rows with the label indices the other way round
    assert labelled(["a", "b", "c"], [1, 0, 1], LABELS[::-1]).manifest_sha256() == digest
    assert labelled(["a", "b", "c"], [0, 1, 1], LABELS).manifest_sha256() != digest
    assert labelled(["a", "b", "d"], [0, 1, 0], LABELS).manifest_sha256() != digest


def test_data_summary_counts_labels_and_unreadable_images() -> None:
    data = labelled(["a", "b", "c"], [0, 1, 0], LABELS)
    report = LoadReport(unreadable=[("x", "no label"), ("y", "corrupt_image: truncated")])
    summary = data_summary(data, "s3://d/", report)
    assert summary.source == "s3://d/"
    assert summary.counts == {"real": 2, "synthetic": 1}
    assert summary.unreadable == 2
    assert summary.manifest_sha256 == data.manifest_sha256()


# --- export --------------------------------------------------------------------------


@pytest.fixture
def trained() -> tuple[SynthNet, np.ndarray, Normalisation]:
    """A tiny net trained for a few steps (so BatchNorm statistics are not the defaults)."""
    images, labels = bright_and_dark(16)
    norm = Normalisation.of(images)
    torch.manual_seed(0)
    net = SynthNet(TINY, num_classes=2)
    train_classifier(net, images, labels, norm, TrainConfig(epochs=2, batch_size=8, bf16=False))
    return net, images, norm


def card_for(
    net: SynthNet, model_bytes: bytes, norm: Normalisation, temperature: float
) -> ModelCard:
    return build_card(
        name="toy",
        version="1",
        net=net,
        model_bytes=model_bytes,
        labels=LABELS,
        architecture=TINY.describe(),
        preprocessing=Preprocessing(input_size=(8, 8), mean=norm.mean, std=norm.std),
        calibration=Calibration(temperature=temperature),
        training=None,
        metrics={},
    )


def test_an_exported_net_loads_and_scores_like_the_eager_one(
    trained: tuple[SynthNet, np.ndarray, Normalisation],
) -> None:
    net, images, norm = trained
    model_bytes = export_torchscript(net, (8, 8))
    card = card_for(net, model_bytes, norm, temperature=2.0)
    assert card.sha256 == hashlib.sha256(model_bytes).hexdigest()
    assert card.size_bytes == len(model_bytes)
    assert card.parameters == count_parameters(net)

    loaded = load_model(card, model_bytes, CPU)
    x = norm.apply(torch.from_numpy(images))
    with torch.no_grad():
        eager = net.eval()(x)
        scripted = loaded.module(x)
    assert torch.allclose(scripted, eager, atol=1e-4)
    # the serving path: uint8 in, normalised by the card, divided by its temperature
    expected = softmax(eager.numpy().astype(np.float64), temperature=2.0)
    assert np.allclose(loaded.predict_proba(images), expected, atol=1e-4)


def test_a_card_with_another_sha256_is_refused(
    trained: tuple[SynthNet, np.ndarray, Normalisation],
) -> None:
    net, _, norm = trained
    model_bytes = export_torchscript(net, (8, 8))
    card = card_for(net, model_bytes, norm, temperature=1.0)
    with pytest.raises(ChecksumMismatch):
        load_model(card.model_copy(update={"sha256": "0" * 64}), model_bytes, CPU)
    with pytest.raises(ChecksumMismatch):
        load_model(card, model_bytes[:-1], CPU)


class _BranchesOnItsInput(torch.nn.Module):
    """Data-dependent control flow: a trace on zeros records only one branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.abs().sum() > 0):
            return x.mean(dim=(2, 3)) * 2
        return -x.mean(dim=(2, 3))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_an_export_that_does_not_reproduce_the_network_is_refused() -> None:
    with pytest.raises(ModelError, match="does not reproduce"):
        export_torchscript(_BranchesOnItsInput(), (8, 8))
