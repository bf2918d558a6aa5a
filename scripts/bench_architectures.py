"""Bare-network CPU throughput of the default-model candidates, side by side.

    python scripts/bench_architectures.py              # batch 64, 3 s each
    python scripts/bench_architectures.py --batch 32 --seconds 5

Untrained networks (speed does not depend on the weights), exported exactly as
training exports them (traced, frozen TorchScript), fed channels_last float
tensors: the cost of the network alone, without decoding or normalisation.
docs/default-model.md's accuracy-vs-speed table of candidates uses it.
"""

from __future__ import annotations

import argparse
import io
import time

import torch

from worker.inference.device import configure_cpu_threads
from worker.retrain.training.efficientnet_lite import EfficientNetLite0
from worker.retrain.training.export import export_torchscript
from worker.retrain.training.nets import SynthNet, SynthNetSpec


def candidates() -> dict[str, torch.nn.Module]:
    """The default-model candidates, by the names docs/default-model.md uses."""
    nets: dict[str, torch.nn.Module] = {
        f"Lite0 cut after block {depth}": EfficientNetLite0(2, stem_stride=1, depth=depth)
        for depth in (8, 9, 10, 11)
    }
    nets["Lite0 whole"] = EfficientNetLite0(2, stem_stride=1)
    nets["SynthNet 32-64-128, stride-2 stem"] = SynthNet(
        SynthNetSpec(widths=(32, 64, 128), blocks=(1, 1, 1), stem_stride=2), 2
    )
    return nets


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = one per core)")
    args = parser.parse_args()
    configure_cpu_threads(args.threads)
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    print(f"batch {args.batch}, torch threads {torch.get_num_threads()}")
    print(f"{'network':<36} {'img/s':>8} {'params':>8} {'MB':>6}")
    for name, net in candidates().items():
        model_bytes = export_torchscript(net, (32, 32))
        scripted = torch.jit.load(io.BytesIO(model_bytes))
        with torch.inference_mode():
            for _ in range(5):
                scripted(x)
            n, started = 0, time.perf_counter()
            while time.perf_counter() - started < args.seconds:
                scripted(x)
                n += 1
            rate = n * args.batch / (time.perf_counter() - started)
        params = sum(p.numel() for p in net.parameters()) / 1e6
        print(f"{name:<36} {rate:>8.0f} {params:>7.2f}M {len(model_bytes) / 1e6:>6.2f}")


if __name__ == "__main__":
    main()
