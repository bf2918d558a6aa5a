"""The training building blocks: stratified splits and folds, metrics, temperature scaling,
and the training loop (learning, short runs, deadlines, distillation, augmentation, TTA).

Every network here is a one-stage SynthNet on 8x8 images, trained for a few steps.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.support.toy_images import bright_and_dark
from worker.retrain.training import loop
from worker.retrain.training.augment import Mix, augment, shift
from worker.retrain.training.batchnorm import PRECISE_BN_IMAGES, recalibrate_batchnorm
from worker.retrain.training.calibration import cross_fitted_probabilities, fit_temperature
from worker.retrain.training.loop import (
    EpochReport,
    Normalisation,
    TrainConfig,
    predict_logits,
    teacher_views,
    train_classifier,
)
from worker.retrain.training.nets import SynthNet, SynthNetSpec
from worker.retrain.training.splits import stratified_folds, stratified_split
from worker.review.evaluation import evaluation_metrics, expected_calibration_error, softmax

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = SynthNetSpec(widths=(16,), blocks=(1,))
QUICK = TrainConfig(epochs=5, batch_size=8, lr=1e-2, bf16=False)
UNBALANCED = np.array([0] * 30 + [1] * 12 + [2] * 7)


def tiny_net(seed: int = 0) -> SynthNet:
    torch.manual_seed(seed)
    return SynthNet(TINY, num_classes=2)


def accuracy(net: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    norm = Normalisation.of(images)
    return float((predict_logits(net, images, norm).argmax(1) == labels).mean())


def mirrored(images: np.ndarray) -> np.ndarray:
    """NHWC images flipped left to right."""
    return np.ascontiguousarray(images[:, :, ::-1])


# --- splits ----------------------------------------------------------------------------


def test_stratified_split_holds_back_each_class_share() -> None:
    keep, held = stratified_split(UNBALANCED, share=0.2, seed=3)
    for k, total in enumerate(np.bincount(UNBALANCED)):
        assert abs(np.sum(UNBALANCED[held] == k) - 0.2 * total) <= 1
    assert not set(keep) & set(held)
    assert sorted([*keep, *held]) == list(range(len(UNBALANCED)))


def test_stratified_split_is_deterministic_by_seed() -> None:
    first = stratified_split(UNBALANCED, 0.3, seed=1)
    again = stratified_split(UNBALANCED, 0.3, seed=1)
    other = stratified_split(UNBALANCED, 0.3, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])


def test_stratified_split_holds_back_at_least_one_of_a_rare_class() -> None:
    labels = np.array([0] * 20 + [1] * 2)
    _, held = stratified_split(labels, share=0.1)
    assert np.sum(labels[held] == 1) == 1


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_stratified_folds_cover_every_index_once_with_the_overall_class_mix(folds: int) -> None:
    parts = stratified_folds(UNBALANCED, folds, seed=4)
    assert len(parts) == folds
    everything = np.concatenate(parts)
    assert sorted(everything) == list(range(len(UNBALANCED)))  # disjoint and covering
    overall = np.bincount(UNBALANCED) / len(UNBALANCED)
    for part in parts:
        counts = np.bincount(UNBALANCED[part], minlength=3)
        assert counts.min() >= 1
        expected = overall * len(part)
        assert np.all(np.abs(counts - expected) <= 1.5), (counts, expected)


def test_stratified_folds_depend_only_on_the_seed() -> None:
    same = stratified_folds(UNBALANCED, 3, seed=7), stratified_folds(UNBALANCED, 3, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(*same, strict=True))
    other = stratified_folds(UNBALANCED, 3, seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(same[0], other, strict=True))


# --- metrics -------------------------------------------------------------------------


def test_ece_is_zero_when_always_right_with_full_confidence() -> None:
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert expected_calibration_error(probs, np.array([0, 1, 0])) == 0.0


def test_ece_of_a_single_bin_is_the_gap_between_accuracy_and_confidence() -> None:
    probs = np.tile([0.7, 0.3], (10, 1))
    labels = np.array([0] * 6 + [1] * 4)  # 60% right at 70% confidence
    assert expected_calibration_error(probs, labels) == pytest.approx(0.1)


def test_ece_weights_bins_by_their_size() -> None:
    probs = np.array([[0.95, 0.05]] * 3 + [[0.55, 0.45]] * 1)
    labels = np.array([0, 0, 0, 1])  # bin 0.95: all right; bin 0.55: all wrong
    expected = 0.75 * abs(1.0 - 0.95) + 0.25 * abs(0.0 - 0.55)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_softmax_rows_sum_to_one_and_survive_huge_logits() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0], [5.0, 5.0, 5.0]])
    probs = softmax(logits)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert np.all(np.isfinite(probs))
    assert np.allclose(probs[2], 1 / 3)


def test_a_temperature_above_one_flattens_without_changing_the_label() -> None:
    logits = np.array([[2.0, -1.0], [0.5, 3.0]])
    sharp, flat = softmax(logits), softmax(logits, temperature=4.0)
    assert np.all(flat.max(axis=1) < sharp.max(axis=1))
    assert np.all(flat.max(axis=1) > 0.5)
    assert np.array_equal(flat.argmax(axis=1), sharp.argmax(axis=1))


def test_evaluation_metrics_on_a_hand_made_example() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]])
    labels = np.array([0, 0, 0, 1, 1])  # predicted 0, 0, 1, 1, 0
    metrics = evaluation_metrics(probs, labels, ["real", "synthetic", "other"], "toy", 0.05)
    assert metrics.dataset == "toy"
    assert metrics.n == 5
    assert metrics.accuracy == pytest.approx(3 / 5)
    # a label without examples has no accuracy, rather than a 0 or a NaN
    assert metrics.per_class_accuracy == pytest.approx({"real": 2 / 3, "synthetic": 1 / 2})
    assert metrics.ece == pytest.approx(expected_calibration_error(probs, labels))
    assert metrics.accuracy_std == 0.05


# --- temperature scaling -----------------------------------------------------------------


def test_fit_temperature_recovers_the_overconfidence_factor() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(2000, 3)) * 2
    labels = np.array([rng.choice(3, p=row) for row in softmax(true_logits)])
    temperature = fit_temperature(true_logits * 3, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    calibrated = softmax(true_logits * 3, temperature)
    assert np.array_equal(calibrated.argmax(1), true_logits.argmax(1))


@pytest.mark.parametrize(
    ("labels", "bound"),
    [
        pytest.param(np.array([0, 1] * 20), 0.05, id="always right: sharpen to the lower bound"),
        pytest.param(np.array([1, 0] * 20), 20.0, id="always wrong: flatten to the upper bound"),
    ],
)
def test_fit_temperature_is_bounded(labels: np.ndarray, bound: float) -> None:
    logits = np.array([[0.25, -0.25], [-0.25, 0.25]] * 20)
    assert fit_temperature(logits, labels) == pytest.approx(bound)


def test_cross_fitted_probabilities_keep_labels_and_calibrate_each_half() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 4000)
    true_logits = np.stack([np.zeros(4000), (labels * 2 - 1) * rng.gamma(2.0, 1.0, 4000)], 1)
    true_logits += rng.normal(0, 1.0, true_logits.shape)
    overconfident = true_logits * 3
    probs = cross_fitted_probabilities(overconfident, labels)
    assert probs.shape == overconfident.shape
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert (probs.argmax(1) == overconfident.argmax(1)).all()
    raw_ece = expected_calibration_error(softmax(overconfident), labels)
    assert expected_calibration_error(probs, labels) < raw_ece / 3


# --- the training loop ------------------------------------------------------------------


def test_normalisation_of_a_set_centres_and_scales_it() -> None:
    images, _ = bright_and_dark(20)
    x = Normalisation.of(images).apply(torch.from_numpy(images))
    assert x.shape == (20, 3, 8, 8)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)


def test_train_classifier_learns_a_separable_set_either_way_round() -> None:
    images, labels = bright_and_dark(40)
    for target in (labels, 1 - labels):  # only learning can get both right
        net = train_classifier(tiny_net(), images, target, Normalisation.of(images), QUICK)
        assert not net.training
        assert accuracy(net, images, target) > 0.9


def test_recalibrate_batchnorm_sets_the_statistics_of_the_given_images() -> None:
    images, _ = bright_and_dark(40)
    norm = Normalisation((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    conv, bn = torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)
    net = torch.nn.Sequential(conv, bn)
    bn.running_mean.fill_(7.0)  # stale statistics from somewhere else
    recalibrate_batchnorm(net, images, norm.apply, batch_size=10)  # four batches, equal weight
    with torch.no_grad():
        features = conv(norm.apply(torch.from_numpy(images)))
    assert torch.allclose(bn.running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1  # restored for any later training
    assert not net.training


def test_precise_bn_runs_at_the_end_of_training(monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = bright_and_dark(40)
    calls: list[int] = []
    monkeypatch.setattr(
        "worker.retrain.training.loop.recalibrate_batchnorm",
        lambda net, imgs, norm, batch_size: calls.append(len(imgs)),
    )
    norm = Normalisation.of(images)
    train_classifier(tiny_net(), images, labels, norm, QUICK)
    assert calls == []
    train_classifier(tiny_net(), images, labels, norm, replace(QUICK, precise_bn=True))
    assert calls == [40]


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("warmup_share", [0.25, 0.5])
def test_very_short_runs_train(steps: int, warmup_share: float) -> None:
    images, labels = bright_and_dark(30)  # batch 64: one step per epoch
    cfg = TrainConfig(epochs=steps, batch_size=64, warmup_share=warmup_share, bf16=False)
    net = tiny_net()
    before = net.head.weight.detach().clone()
    reports: list[EpochReport] = []
    train_classifier(net, images, labels, Normalisation.of(images), cfg, on_epoch=reports.append)
    assert [r.epoch for r in reports] == list(range(1, steps + 1))
    assert all(r.epochs == steps and np.isfinite(r.loss) for r in reports)
    assert not torch.equal(net.head.weight, before)


def test_a_passed_deadline_returns_at_once_in_eval_mode() -> None:
    images, labels = bright_and_dark(30)
    net = tiny_net()
    before = [p.detach().clone() for p in net.parameters()]
    started = time.monotonic()
    cfg = TrainConfig(epochs=10_000, batch_size=8, bf16=False)
    train_classifier(net, images, labels, Normalisation.of(images), cfg, deadline=started - 1)
    assert time.monotonic() - started < 1.0
    assert not net.training
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))


def test_a_deadline_cuts_a_long_run_short() -> None:
    images, labels = bright_and_dark(30)
    started = time.monotonic()
    cfg = TrainConfig(epochs=100_000, batch_size=8, bf16=False)
    net = train_classifier(
        tiny_net(), images, labels, Normalisation.of(images), cfg, deadline=started + 0.3
    )
    assert time.monotonic() - started < 3.0
    assert not net.training


def test_distillation_follows_the_teacher_over_the_labels() -> None:
    images, labels = bright_and_dark(40)
    opposite = np.where((1 - labels)[:, None] == 1, [-4.0, 4.0], [4.0, -4.0])
    teacher = np.stack([opposite, opposite], axis=1).astype(np.float32)  # (N, 2 views, 2)
    cfg = TrainConfig(epochs=5, batch_size=8, lr=1e-2, bf16=False, distill_alpha=1.0)
    net = train_classifier(
        tiny_net(), images, labels, Normalisation.of(images), cfg, teacher_logits=teacher
    )
    agrees_with_teacher = accuracy(net, images, 1 - labels)
    assert agrees_with_teacher > 0.9
    assert agrees_with_teacher > accuracy(net, images, labels)


def test_augment_reports_exactly_which_images_it_mirrored() -> None:
    ramp = torch.arange(8, dtype=torch.float32)  # left-right asymmetric
    x = ramp.expand(32, 3, 8, 8).clone()
    out, flipped = augment(x, True, 0, torch.Generator().manual_seed(0))
    assert flipped.dtype == torch.bool
    assert flipped.any()
    assert not flipped.all()
    for i in range(32):
        expected = x[i].flip(-1) if flipped[i] else x[i]
        assert torch.equal(out[i], expected), i


def test_augment_without_flips_mirrors_nothing_and_keeps_the_shape() -> None:
    x = torch.randn(6, 3, 8, 8)
    out, flipped = augment(x, False, 2, torch.Generator().manual_seed(0))
    assert not flipped.any()
    assert out.shape == x.shape
    assert torch.equal(augment(x, False, 0, torch.Generator())[0], x)


@pytest.mark.parametrize("per_image", [False, True])
def test_shift_moves_images_by_at_most_pad_cells(per_image: bool) -> None:
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8).expand(16, 2, 8, 8).contiguous()
    moved = shift(x, 1, torch.Generator().manual_seed(0), per_image=per_image)
    assert moved.shape == x.shape
    centre = moved[:, :, 3:5, 3:5]  # far from the borders: a plain offset of the original
    offsets = {
        (int(d) // 8, int(d) % 8)
        for d in (centre[:, 0, 0, 0] - x[0, 0, 3, 3] + 9).tolist()  # +9: (row+1, col+1)
    }
    assert offsets <= {(r, c) for r in range(3) for c in range(3)}
    assert torch.equal(moved[:, 0], moved[:, 1])  # every channel moves together
    distinct = {tuple(m[0].flatten().tolist()) for m in moved}
    assert (len(distinct) > 1) == per_image  # one offset per batch, or one per image


def test_flip_tta_averages_the_image_and_its_mirror_image() -> None:
    images, _ = bright_and_dark(10, seed=1)
    norm = Normalisation.of(images)
    net = tiny_net().eval()
    tta = predict_logits(net, images, norm, flip_tta=True, batch_size=4)
    manual = (predict_logits(net, images, norm) + predict_logits(net, mirrored(images), norm)) / 2
    assert np.allclose(tta, manual, atol=1e-5)
    assert not np.allclose(tta, predict_logits(net, images, norm), atol=1e-5)


def test_predict_logits_of_no_images_is_empty() -> None:
    images, _ = bright_and_dark(4)
    assert predict_logits(tiny_net(), images[:0], Normalisation.of(images)).shape == (0, 2)


def test_teacher_views_hold_the_plain_and_the_mirrored_logits() -> None:
    images, _ = bright_and_dark(6, seed=2)
    norm = Normalisation.of(images)
    net = tiny_net().eval()
    views = teacher_views(net, images, norm)
    assert views.shape == (6, 2, 2)
    assert views.dtype == np.float32
    assert np.allclose(views[:, 0], predict_logits(net, images, norm), atol=1e-6)
    assert np.allclose(views[:, 1], predict_logits(net, mirrored(images), norm), atol=1e-6)


# --- mixup and precise BN on large sets ------------------------------------------------


def test_mix_blends_each_image_with_its_partner_at_the_drawn_weight() -> None:
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    mix = Mix(partner=torch.tensor([1, 0, 3, 2]), weight=0.75)
    mixed = mix.images(x)
    assert torch.allclose(mixed[0], torch.full((3, 2, 2), 0.25))  # 0.75 * 0 + 0.25 * 1
    assert torch.allclose(mixed[2], torch.full((3, 2, 2), 2.25))  # 0.75 * 2 + 0.25 * 3
    one_hot = torch.eye(2)[torch.tensor([0, 1, 0, 1])]
    assert torch.allclose(mix.targets(one_hot)[0], torch.tensor([0.75, 0.25]))


def test_mix_is_off_without_alpha_and_reproducible_with_it() -> None:
    def draw(alpha: float, seed: int) -> Mix | None:
        return Mix.draw(8, alpha, np.random.default_rng(seed), torch.Generator().manual_seed(seed))

    assert draw(0.0, 0) is None
    first, again = draw(0.4, 0), draw(0.4, 0)
    assert first is not None
    assert again is not None
    assert 0.0 <= first.weight <= 1.0
    assert first.weight == again.weight
    assert torch.equal(first.partner, again.partner)
    assert sorted(first.partner.tolist()) == list(range(8))


def test_the_mixed_loss_is_the_weighted_loss_of_both_labels() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    y = torch.tensor([0, 1])
    mix = Mix(partner=torch.tensor([1, 0]), weight=0.3)
    ce = torch.nn.functional.cross_entropy
    expected = 0.3 * ce(logits, y) + 0.7 * ce(logits, y[mix.partner])
    assert torch.allclose(loop._loss(logits, y, QUICK, None, mix), expected)


def test_training_with_mixup_still_learns_a_separable_set() -> None:
    images, labels = bright_and_dark(40)
    cfg = replace(QUICK, epochs=10, mixup_alpha=0.4)
    net = train_classifier(tiny_net(), images, labels, Normalisation.of(images), cfg)
    assert accuracy(net, images, labels) > 0.9


def test_precise_bn_on_a_large_set_uses_an_even_spread_of_it() -> None:
    n = PRECISE_BN_IMAGES * 3
    images = np.zeros((n, 2, 2, 3), dtype=np.uint8)
    images[::3] = 200  # exactly the images an even spread of every third one picks
    norm = Normalisation((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    bn = torch.nn.BatchNorm2d(3)
    recalibrate_batchnorm(torch.nn.Sequential(bn), images, norm.apply, batch_size=512)
    assert torch.allclose(bn.running_mean, torch.full((3,), 200 / 255), atol=1e-5)


def test_a_run_with_a_deadline_stops_in_time_for_its_precise_bn_pass() -> None:
    now = time.monotonic()
    # 100 images took 10 s so far: 1,000 precise-BN images cost about 50 s more
    with_bn = loop._Clock(deadline=now + 20.0, started=now - 10.0, bn_images=1000)
    with_bn.trained(100)
    assert with_bn.out_of_time()
    without_bn = loop._Clock(deadline=now + 20.0, started=now - 10.0, bn_images=0)
    without_bn.trained(100)
    assert not without_bn.out_of_time()
    assert not loop._Clock(deadline=None, started=now, bn_images=1000).out_of_time()
    assert loop._Clock(deadline=now - 1.0, started=now, bn_images=0).out_of_time()
