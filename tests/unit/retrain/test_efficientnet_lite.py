"""EfficientNet-Lite0 as the search builds it: ImageNet weights where they fit, fresh layers
where they cannot (the classifier, a truncated network's neck)."""

from __future__ import annotations

import pytest
import torch

from worker.retrain.training.efficientnet_lite import EfficientNetLite0, weights_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_truncated_network_with_a_neck_loads_the_imagenet_backbone() -> None:
    imagenet = torch.load(weights_path(), map_location="cpu", weights_only=True)
    net = EfficientNetLite0(2, stem_stride=1, depth=8, neck=64).load_imagenet()
    state = net.state_dict()
    assert torch.equal(state["_conv_stem.weight"], imagenet["_conv_stem.weight"])
    assert torch.equal(
        state["_blocks.7._project_conv.weight"], imagenet["_blocks.7._project_conv.weight"]
    )
    assert net.neck is not None
    assert net.neck[0].weight.shape == (64, 80, 1, 1)  # block 8's 80 channels, widened
    assert net.head.in_features == 64


def test_the_neck_trains_with_the_rest_after_a_frozen_prefix() -> None:
    torch.manual_seed(0)
    net = EfficientNetLite0(2, stem_stride=1, depth=4, neck=32).eval()
    prefix, rest = net.split_modules(2)
    assert net.neck is not None
    assert any(module is net.neck for module in rest)
    ids = sorted(id(p) for p in [*prefix.parameters(), *rest.parameters()])
    assert ids == sorted(id(p) for p in net.parameters())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.forward_from(net.prefix_features(x, 2), 2), net(x), atol=1e-6)
        assert net(x).shape == (3, 2)


def test_the_whole_network_keeps_its_own_head_and_no_neck() -> None:
    net = EfficientNetLite0(2, stem_stride=1, neck=64)
    assert net.neck is None
    assert net.head.in_features == 1280
