"""Training on a frozen prefix's cached features: the cache holds what the exported network
computes, the frozen layers stay put while the rest learns, and one cache serves every run
of a search.

The networks are EfficientNet-Lite0 cut after four blocks, randomly initialised (the
ImageNet weights are not what is tested), on 32 px toy images.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.support.toy_images import bright_and_dark
from worker.retrain.training.efficientnet_lite import EfficientNetLite0
from worker.retrain.training.frozen import PrefixCache
from worker.retrain.training.loop import (
    Normalisation,
    TrainConfig,
    predict_logits,
    train_classifier,
)
from worker.retrain.training.search import PrefixCaches

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NORM = Normalisation((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
FROZEN = TrainConfig(
    epochs=6, batch_size=8, lr=1e-2, bf16=False, precise_bn=True, frozen_blocks=3, translate=2
)


def small_net(seed: int = 0) -> EfficientNetLite0:
    torch.manual_seed(seed)
    return EfficientNetLite0(2, stem_stride=1, depth=4)


def images_and_labels(n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    return bright_and_dark(n, size=32)


@pytest.mark.parametrize("blocks", [0, 1, 3, 4])
def test_the_network_is_its_prefix_followed_by_the_rest(blocks: int) -> None:
    net = small_net().eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        split = net.forward_from(net.prefix_features(x, blocks), blocks)
        assert torch.allclose(split, net(x), atol=1e-6)


def test_split_modules_cover_every_parameter_once() -> None:
    net = small_net()
    prefix, rest = net.split_modules(3)
    ids = [id(p) for p in [*prefix.parameters(), *rest.parameters()]]
    assert sorted(ids) == sorted(id(p) for p in net.parameters())


def test_the_cache_holds_what_the_prefix_computes_for_each_image_and_its_mirror() -> None:
    images, _ = images_and_labels(10)
    net = small_net()
    cache = PrefixCache.build(net, images, NORM.apply, 3)
    assert cache.views.shape == (10, 2, 24, 16, 16)  # blocks 1-2 halve 32 px once
    assert cache.stride == 2
    x = NORM.apply(torch.from_numpy(images))
    net.eval()
    with torch.no_grad():
        plain, mirror = net.prefix_features(x, 3), net.prefix_features(x.flip(3), 3)
    assert torch.allclose(cache.views[:, 0].float(), plain, atol=2e-2, rtol=1e-2)
    assert torch.allclose(cache.views[:, 1].float(), mirror, atol=2e-2, rtol=1e-2)
    assert cache.rows(np.array([2, 5])).views.shape[0] == 2
    assert torch.equal(cache.rows(np.array([2, 5])).views[1], cache.views[5])


def test_the_cache_fits_the_frozen_batchnorm_statistics_to_the_images() -> None:
    images, _ = images_and_labels(16)
    net = small_net()
    net._bn0.running_mean.fill_(9.0)  # ImageNet's (or anyone's) statistics, not these images'
    cache = PrefixCache.build(net, images, NORM.apply, 3)
    with torch.no_grad():
        stem = net._conv_stem(NORM.apply(torch.from_numpy(images)))
    assert torch.allclose(cache.state["1.running_mean"], stem.mean(dim=(0, 2, 3)), atol=1e-4)


def test_frozen_training_learns_with_the_prefix_unchanged_and_trainable_again() -> None:
    images, labels = images_and_labels(32)
    net = small_net()
    prefix_before = [p.detach().clone() for p in net.split_modules(3)[0].parameters()]
    rest_before = [p.detach().clone() for p in net.split_modules(3)[1].parameters()]
    train_classifier(net, images, labels, NORM, FROZEN)
    prefix, rest = net.split_modules(3)
    assert all(torch.equal(p, b) for p, b in zip(prefix.parameters(), prefix_before, strict=True))
    assert any(not torch.equal(p, b) for p, b in zip(rest.parameters(), rest_before, strict=True))
    assert all(p.requires_grad for p in net.parameters())
    assert not net.training
    predictions = predict_logits(net, images, NORM).argmax(1)
    assert (predictions == labels).mean() > 0.9


def test_a_frozen_run_predicts_from_the_same_features_it_trained_on() -> None:
    """The exported network (prefix + rest in eval mode) sees exactly the cached features."""
    images, labels = images_and_labels(16)
    net = small_net()
    cache = PrefixCache.build(small_net(), images, NORM.apply, 3)
    train_classifier(net, images, labels, NORM, replace(FROZEN, epochs=1), prefix=cache)
    with torch.no_grad():
        from_cache = net.forward_from(cache.views[:, 0].float(), 3)
    assert np.allclose(predict_logits(net, images, NORM), from_cache.numpy(), atol=5e-2)


def test_a_given_cache_is_used_instead_of_building_one(monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = images_and_labels(16)
    cache = PrefixCache.build(small_net(), images, NORM.apply, 3)

    def no_rebuild(*args: object, **kwargs: object) -> PrefixCache:
        raise AssertionError("the shared cache should have been used")

    monkeypatch.setattr(PrefixCache, "build", no_rebuild)
    train_classifier(small_net(), images, labels, NORM, replace(FROZEN, epochs=1), prefix=cache)


def test_a_search_builds_one_cache_per_prefix_depth() -> None:
    from worker.retrain.training.candidates import search_space

    images, _ = images_and_labels(8)
    caches = PrefixCaches(images)
    plain, frozen = search_space(0, 8)[:2]
    assert plain.config.frozen_blocks == 0
    assert frozen.config.frozen_blocks == 3
    assert caches.for_candidate(plain) is None
    first = caches.for_candidate(frozen)
    assert first is not None
    assert first.views.shape[0] == 8
    assert caches.for_candidate(frozen) is first


def test_freezing_a_network_without_a_prefix_is_a_clear_error() -> None:
    from worker.retrain.training.nets import SynthNet, SynthNetSpec

    images, labels = images_and_labels(8)
    net = SynthNet(SynthNetSpec(widths=(8,), blocks=(1,)), num_classes=2)
    with pytest.raises(ValueError, match="needs a network with a prefix"):
        train_classifier(net, images, labels, NORM, FROZEN)
