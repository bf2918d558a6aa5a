"""Give a published EfficientNet-Lite0 model a domain check without retraining it.

    python scripts/add_domain_check.py --model default@1      # rewrites worker/models/default/1

Models exported before the domain check return logits only. This script rebuilds
the network from the TorchScript file's own constants (the frozen graph holds every
convolution with its BatchNorm folded into weight and bias, in execution order),
checks that the rebuilt network reproduces the file's logits on every image it
scores, fits the domain summary on the model's training images (the same split of
``dev-train.tar`` that ``train_default_model.py`` trains on: seed 0, 2,000 held
back) and republishes the version with a file that returns (logits, domain score)
and a card that records the domain. The weights, labels, calibration and metrics
do not change; only the file's sha256 and size do.
"""

from __future__ import annotations

import argparse
import io
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from contracts import ModelId, ModelRef
from scripts.train_default_model import CIFAKE_DOMAIN, DATA, IMAGENET, load
from worker.inference.registry import ModelRegistry
from worker.retrain.training.domain import DomainScored, domain_summary, fit_domain
from worker.retrain.training.efficientnet_lite import EfficientNetLite0, MBConv
from worker.retrain.training.export import export_torchscript
from worker.retrain.training.loop import predict_logits
from worker.retrain.training.splits import stratified_split
from worker.settings import BUNDLED_MODELS, Settings
from worker.storage import Storage

ARCHITECTURE = re.compile(r"^efficientnet-lite0\(stem_stride=(\d), blocks=(\d+)\)$")


def rebuild_lite0(module: torch.jit.ScriptModule, stem_stride: int, depth: int) -> nn.Module:
    """An ``EfficientNetLite0`` holding the frozen file's weights (BatchNorm as identity + bias)."""
    net = EfficientNetLite0(2, stem_stride=stem_stride, depth=depth).eval()
    convs = [n for n in module.graph.nodes() if n.kind() == "aten::_convolution"]
    linear = [n for n in module.graph.nodes() if n.kind() == "aten::linear"]
    pairs = [
        (m, bn)
        for m, bn in _conv_bn_pairs(net)
        if isinstance(m, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    ]
    if len(convs) != len(pairs) or len(linear) != 1:
        raise ValueError(f"{len(convs)} convolutions in the file, {len(pairs)} in the network")
    with torch.no_grad():
        for node, (conv, bn) in zip(convs, pairs, strict=True):
            weight, bias = (_constant(i) for i in list(node.inputs())[1:3])
            conv.weight.copy_(weight)
            bn.weight.fill_(1.0)
            bn.bias.copy_(bias)
            assert bn.running_mean is not None
            assert bn.running_var is not None
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
        weight, bias = (_constant(i) for i in list(linear[0].inputs())[1:3])
        net.head.weight.copy_(weight)
        net.head.bias.copy_(bias)
    return net


def _conv_bn_pairs(net: EfficientNetLite0) -> list[tuple[nn.Module, nn.Module]]:
    """Every convolution and the BatchNorm after it, in execution order."""
    pairs: list[tuple[nn.Module, nn.Module]] = [(net._conv_stem, net._bn0)]
    for block in net._blocks:
        assert isinstance(block, MBConv)
        if block.has_expand:
            pairs.append((block._expand_conv, block._bn0))
        pairs.append((block._depthwise_conv, block._bn1))
        pairs.append((block._project_conv, block._bn2))
    return pairs


def _constant(value: torch.Value) -> torch.Tensor:
    node = value.node()
    if node.kind() != "prim::Constant":
        raise ValueError(f"expected a constant, found {node.kind()}")
    tensor: torch.Tensor = node.t("value")
    return tensor


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default@1")
    parser.add_argument("--registry", default=str(BUNDLED_MODELS))
    parser.add_argument("--train-tar", type=Path, default=DATA / "dev-train.tar")
    parser.add_argument("--validation", type=int, default=2000)
    args = parser.parse_args()
    settings = Settings()
    registry = ModelRegistry(Storage.from_settings(settings), [args.registry])
    ref = ModelRef.parse(args.model)
    model_id = ModelId(name=ref.name, version=ref.version or registry.resolve(ref).version)
    card, model_bytes = registry.read_model(model_id)
    match = ARCHITECTURE.match(card.architecture)
    if match is None:
        raise SystemExit(f"cannot rebuild {card.architecture!r}: only plain Lite0 exports")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(io.BytesIO(model_bytes)).eval()
    net = rebuild_lite0(module, int(match.group(1)), int(match.group(2)))

    data, _ = load(args.train_tar, card.preprocessing, settings)
    seed = card.training.seed if card.training else 0
    fit_idx, val_idx = stratified_split(data.labels, args.validation / len(data), seed=seed)
    fit, val = data.subset(fit_idx), data.subset(val_idx)
    with torch.inference_mode():
        x = IMAGENET.apply(torch.from_numpy(val.images[:512]))
        original = module(x)
    rebuilt = predict_logits(net, val.images[:512], IMAGENET)
    gap = float(np.abs(original.numpy() - rebuilt).max())
    print(f"rebuilt network reproduces the file's logits within {gap:.2e}")
    if gap > 1e-3:
        raise SystemExit("the rebuilt network does not match the file")

    domain = fit_domain(net, IMAGENET, fit.images, fit.labels, val.images, seed=seed)
    new_bytes = export_torchscript(DomainScored(net, domain), card.preprocessing.input_size)
    summary = domain_summary(fit.sources, domain, CIFAKE_DOMAIN, narrow=True)
    from worker.inference.model import sha256_hex

    new_card = card.model_copy(
        update={"sha256": sha256_hex(new_bytes), "size_bytes": len(new_bytes), "domain": summary}
    )
    registry.publish(new_card, new_bytes)
    print(summary.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
