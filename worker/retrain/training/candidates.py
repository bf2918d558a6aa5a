"""What the hyper-parameter search chooses from: model families and their settings.

A ``Candidate`` is everything one training run needs except the data and the
time: family (a scratch ``SynthNet`` or an ImageNet ``EfficientNet-Lite0``),
architecture, learning rate, regularisation and augmentation. The number of
epochs is not a choice the user makes either: the search gives each run a
slice of the budget and converts it into epochs from the family's measured
training speed on this machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache, partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker.retrain.training.efficientnet_lite import START_POINT as IMAGENET_START
from worker.retrain.training.efficientnet_lite import EfficientNetLite0
from worker.retrain.training.loop import Normalisation, TrainConfig
from worker.retrain.training.nets import SynthNet, SynthNetSpec

IMAGENET_NORMALISATION = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""Used by every family, so the engine's preprocessing is the same whichever wins."""


@dataclass(frozen=True)
class Candidate:
    """One point of the search space."""

    family: str
    config: TrainConfig
    net: SynthNetSpec | None = None
    depth: int = 16
    """Blocks of EfficientNet-Lite0 kept (lite0 family only)."""
    min_epochs: float | None = None
    """Fewest epochs worth a unit of time, if not the family's (``search.MIN_EPOCHS``)."""
    neck: int = 0
    """Channels of a truncated Lite0's fresh convolution before pooling (0: none)."""

    @property
    def start(self) -> str:
        return IMAGENET_START if self.family == "lite0" else "scratch"

    def describe(self) -> str:
        neck = f", neck={self.neck}" if self.neck else ""
        arch = (
            self.net.describe()
            if self.net is not None
            else f"efficientnet-lite0(stem_stride=1, blocks={self.depth}{neck})"
        )
        cfg = self.config
        frozen = f" frozen={cfg.frozen_blocks}" if cfg.frozen_blocks else ""
        return f"{arch}{frozen} lr={cfg.lr:g} wd={cfg.weight_decay:g} ls={cfg.label_smoothing:g}"

    def build(self, num_classes: int) -> nn.Module:
        """A fresh network (ImageNet weights loaded for the lite0 family)."""
        if self.family == "lite0":
            net = EfficientNetLite0(num_classes, stem_stride=1, depth=self.depth, neck=self.neck)
            return net.load_imagenet()
        assert self.net is not None
        return SynthNet(self.net, num_classes)

    def with_epochs(self, epochs: float, seed: int, n_train: int | None = None) -> Candidate:
        """This candidate for a run of ``epochs`` on ``n_train`` images, regularised for it."""
        config = replace(self.config, epochs=epochs, seed=seed)
        if self.family == "lite0" and n_train is not None:
            long_run = epochs >= LONG_RUN_EPOCHS and n_train <= LONG_RUN_MAX_IMAGES
            config = replace(
                config, translate=4 if long_run else 2, mixup_alpha=0.4 if long_run else 0.0
            )
        return replace(self, config=config)


LONG_RUN_EPOCHS = 12.0
"""From here on a Lite0 run on a small data set starts to overfit, and stronger augmentation
pays: on 1,280 CIFAKE images at 25 epochs, 4 px translations instead of 2 px added 0.3-0.45
points on dev-test, and mixup +0.3 and +0.4 in two runs, -0.1 in a third (within noise;
kept as it has not hurt); at 5 epochs both were neutral or slightly worse, as the network
has not yet fitted the images it has (``scripts/bench_recipes.py``)."""
LONG_RUN_MAX_IMAGES = 5000
"""Measured on small sets only: larger ones keep the plain augmentation."""


def search_space(seed: int = 0, n_train: int = 0) -> list[Candidate]:
    """Candidates in order of prior merit for ``n_train`` images (measured on CIFAKE subsets).

    On 1,600 CIFAKE images, Lite0 cut after block 8 or 9 learns faster per
    second than the whole network (91-93 % after 4-12 epochs in 7-26 s, where
    the whole one needs about 40 s for 92.5 %) and than scratch CNNs (88-90 %
    in the same time); cuts after block 6 or 7, or 11, did worse. On 24,000
    images capacity matters more than speed: the whole network after 3.8
    epochs already matched the cuts after 6-8 (fold 0: 97.17 % against
    97.08-97.19 %), and trained longer it is the one that passes 97.7 %, so
    large sets try it first. Small sets on a tight budget train the cut after
    block 8 with its first blocks frozen (``UNFROZEN_MIN_EPOCHS``).
    """
    small = SynthNetSpec(widths=(16, 32, 64), blocks=(1, 1, 1), stem_stride=1)
    wide = SynthNetSpec(widths=(32, 64, 128), blocks=(1, 1, 1), stem_stride=2)
    lite = TrainConfig(lr=2e-3, batch_size=64, bf16=False, seed=seed, precise_bn=True)
    scratch = TrainConfig(lr=2e-3, batch_size=64, bf16=False, seed=seed, precise_bn=True)
    synthnets = [
        Candidate("synthnet", replace(scratch, lr=4e-3, label_smoothing=0.05), small),
        Candidate("synthnet", scratch, small),
        Candidate("synthnet", replace(scratch, bf16=True), wide),
    ]
    if n_train >= LARGE_DATA_IMAGES:
        return [
            Candidate("lite0", lite),
            Candidate("lite0", replace(lite, lr=1e-3), depth=9),
            Candidate("lite0", lite, depth=8),
            *synthnets,
        ]
    frozen = replace(lite, frozen_blocks=FROZEN_BLOCKS, shift_per_image=True, batch_size=32)
    frozen_deep = replace(frozen, frozen_blocks=FROZEN_DEEP_BLOCKS, lr=4e-3)
    return [
        Candidate("lite0", lite, depth=8, min_epochs=UNFROZEN_MIN_EPOCHS, neck=NECK_CHANNELS),
        Candidate("lite0", frozen, depth=8, min_epochs=FROZEN_SHALLOW_MIN_EPOCHS),
        Candidate("lite0", frozen_deep, depth=8, min_epochs=FROZEN_MIN_EPOCHS),
        Candidate("lite0", replace(lite, lr=1e-3), depth=9),
        Candidate("lite0", lite),
        *synthnets,
    ]


NECK_CHANNELS = 640
"""Small sets train the cut after block 8 with a fresh 640-channel 1x1 convolution before
pooling (``EfficientNetLite0``'s ``neck``): 12 epochs on 1,280 images scored 93.54 % on
dev-test against 93.35 % without (three seeds; pooling blocks 3 and 5 as well, 93.58 %,
and average plus max pooling, 92.78 %, were not worth their complexity), and a 300 s
retrain 94.87 % against 94.52 %. The frozen-prefix variants go without: there the neck
is a large share of what trains, and 5 blocks frozen ran 9 epochs in the time 14 took
without it (92.5-92.8 % against 93.1 %)."""
FROZEN_BLOCKS = 3
"""Blocks after the stem a frozen-prefix candidate keeps fixed: the ones at 32 and 16 px,
two thirds of a step's time."""
FROZEN_DEEP_BLOCKS = 5
"""The tighter-budget variant also freezes the two 8 px blocks and trains 2.3x faster again:
in about 8 s of training, 7 epochs of it scored 92.5 % on dev-test against 91.6 % for 3
epochs with three blocks frozen (three seeds); around 20 s the two tied (15 against 8
epochs: 92.4 and 92.3 %), and with more time the shallower freeze adapts more. With less
to train it takes a higher learning rate: 4e-3 scored 92.8 % where 2e-3 scored 92.5 %."""
FROZEN_SHALLOW_MIN_EPOCHS = 8.0
"""Below this many epochs per unit the deeper freeze takes over from the shallower one."""
FROZEN_MIN_EPOCHS = 1.5
"""The deeper freeze stays worth its unit down to here: on a 2-core AVX2 CPU a 60 s retrain
could give a frozen network 2.4-2.8 epochs, where the scratch CNN that took its place
(2.4-3.7 epochs) scored 82-86 % on dev-test against 92-93 % for the frozen Lite0."""
UNFROZEN_MIN_EPOCHS = 8.0
"""Below this many epochs per unit, a small set trains the frozen-prefix variant instead:
it trains 2.3-2.8x the epochs in the same time, which beat the whole network at 3 epochs
(92.7 % against 91.6 %, three seeds); single networks tied at about 8-10, and at 25 epochs
each the whole network is 0.7 points ahead (``scripts/bench_recipes.py``). Whole 300 s
retrains settled the middle: the whole network's ensemble at 9.4-9.8 epochs scored
94.27 % on dev-test, the frozen one's at 15-21 epochs 94.05 % and 93.78 %.
The frozen variant also shifts each image on its own (8 epochs: 92.7 % against 92.3 %) and
trains in batches of 32 (92.9 %; the tail trains as fast per image as at 64)."""


LARGE_DATA_IMAGES = 10_000
"""From this many training images on, the whole Lite0 is tried before its truncations."""


PROBE_WARMUP_S = 0.3
"""Untimed steps first: a fresh process's first steps (thread pool, allocator, oneDNN
kernels for new shapes) ran at half speed here, and a plan made from them left
a third of a 60 s budget unused."""


@cache
def training_speed(
    family: str,
    spec: SynthNetSpec | None,
    depth: int,
    batch_size: int,
    bf16: bool,
    frozen_blocks: int = 0,
    neck: int = 0,
) -> float:
    """Images per second one training step processes here (a short probe, cached per process).

    With a frozen prefix the step runs on its cached features, as training does;
    computing the cache (one inference pass per image and mirror image) is left to
    the pace correction, which sees what whole runs take.
    """
    config = TrainConfig(batch_size=batch_size, bf16=bf16)
    candidate = Candidate(family, config, spec, depth, neck=neck)
    net = candidate.build(2).to(memory_format=torch.channels_last).train()
    x = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    forward: Callable[[torch.Tensor], torch.Tensor] = net
    if frozen_blocks:
        assert isinstance(net, EfficientNetLite0)
        net.split_modules(frozen_blocks)[0].requires_grad_(False)
        with torch.no_grad():
            x = net.prefix_features(x, frozen_blocks).contiguous(memory_format=torch.channels_last)
        forward = partial(net.forward_from, blocks=frozen_blocks)

    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    y = torch.from_numpy(np.arange(batch_size) % 2)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return _images_per_second(step, batch_size, PROBE_WARMUP_S)


SCORING_BATCH = 64
"""The batch ``predict_logits`` scores in."""


@cache
def scoring_speed(family: str, spec: SynthNetSpec | None, depth: int, neck: int = 0) -> float:
    """Images per second the whole network scores here in batches of 64 (a short probe).

    What scoring held-out images costs, frozen prefix included, before any validation
    predictions have been timed.
    """
    net = Candidate(family, TrainConfig(), spec, depth, neck=neck).build(2).eval()
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(SCORING_BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def batch() -> None:
        net(x)

    return _images_per_second(batch, SCORING_BATCH, PROBE_WARMUP_S / 2)


def _images_per_second(run: Callable[[], None], images: int, warmup_s: float) -> float:
    """``images`` over the median time of three calls of ``run``, after ``warmup_s`` of calls."""

    def timed() -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    warm_until = time.perf_counter() + warmup_s
    timed()
    while time.perf_counter() < warm_until:
        timed()
    return images / float(np.median([timed() for _ in range(3)]))


def forget_probed_speeds() -> None:
    """Make the next ``speed_of`` / ``scoring_speed_of`` probe again; called as a search starts.

    Probes are cached so one search asks each question once, but a retrain worker
    lives for many retrains and a probe taken while the CPU was busy would steer all
    of them: a 300 s benchmark retrain that reused the probes of a 60 s one in the
    same process found the whole network under its 8 epochs per unit and trained a
    frozen variant instead.
    """
    for probe in (training_speed, scoring_speed):
        if hasattr(probe, "cache_clear"):  # absent where a test stands in for the probe
            probe.cache_clear()


def scoring_speed_of(candidate: Candidate) -> float:
    return scoring_speed(candidate.family, candidate.net, candidate.depth, candidate.neck)


def speed_of(candidate: Candidate) -> float:
    cfg = candidate.config
    return training_speed(
        candidate.family,
        candidate.net,
        candidate.depth,
        cfg.batch_size,
        cfg.bf16,
        cfg.frozen_blocks,
        candidate.neck,
    )
