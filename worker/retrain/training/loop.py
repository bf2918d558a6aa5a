"""The training loop: AdamW with a one-cycle schedule on in-memory uint8 images.

Images stay uint8 NHWC in memory (a 30,000-image 32x32 set is 92 MB) and are
normalised per batch exactly as the inference engine does it, so training and
serving see the same numbers. On CPUs with bf16 support, autocast to bf16
trains about 1.5x faster (measured on this project's 2-core AMD EPYC).
Optionally a teacher's logits (computed once per image and mirror state) are
distilled into the network, mixup blends pairs of images for long runs on small
data sets, and a frozen prefix (``worker.retrain.training.frozen``) lets only the layers
after it train, on its cached outputs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker.retrain.training.augment import Mix, augment
from worker.retrain.training.batchnorm import PRECISE_BN_IMAGES, recalibrate_batchnorm
from worker.retrain.training.frozen import PrefixCache, Splittable


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (recorded in the model card)."""

    epochs: float = 30
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    flip: bool = True
    translate: int = 2
    warmup_share: float = 0.25
    bf16: bool = True
    seed: int = 0
    distill_alpha: float = 0.0
    distill_temperature: float = 2.0
    precise_bn: bool = False
    """Recompute BatchNorm statistics with the final weights (see ``recalibrate_batchnorm``)."""
    mixup_alpha: float = 0.0
    """Mix pairs of images (weight ~ Beta(alpha, alpha)) and their losses; 0 turns it off."""
    shift_per_image: bool = False
    """One random translation per image instead of one per batch."""
    frozen_blocks: int = 0
    """Freeze the stem and this many first blocks and train the rest on their cached
    outputs (``worker.retrain.training.frozen``); 0 trains the whole network."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _rgb(values: np.ndarray) -> tuple[float, float, float]:
    red, green, blue = (float(v) for v in values)
    return red, green, blue


@dataclass(frozen=True)
class Normalisation:
    """Per-channel mean and std on the [0, 1] scale, as in the model card."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, images: np.ndarray) -> Normalisation:
        """Statistics of a uint8 NHWC image set."""
        flat = images.reshape(-1, 3).astype(np.float64) / 255.0
        return cls(_rgb(flat.mean(axis=0)), _rgb(flat.std(axis=0)))

    def apply(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW (channels_last memory)."""
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class EpochReport:
    """Progress of a run, passed to ``on_epoch`` after every epoch."""

    epoch: int
    epochs: int
    loss: float
    elapsed_s: float


def bf16_supported() -> bool:
    """Whether this CPU has native bf16 arithmetic (else autocast would be slower)."""
    return bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)()) and (
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def train_classifier(
    net: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    norm: Normalisation,
    cfg: TrainConfig,
    *,
    teacher_logits: np.ndarray | None = None,
    deadline: float | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    prefix: PrefixCache | None = None,
) -> nn.Module:
    """Train ``net`` in place on uint8 NHWC ``images``; returns it in eval mode.

    ``teacher_logits`` (N, 2, classes), from ``teacher_views``, turns on
    distillation: each image is also pulled towards the teacher's logits for the
    same mirror state (small translations are assumed not to change them, which
    lets a large teacher be run once instead of on every step).

    ``prefix`` is a ``PrefixCache`` of exactly ``images`` for ``cfg.frozen_blocks``
    (shared by the runs of a search); without it a frozen prefix caches its own.

    ``deadline`` (a ``time.monotonic()`` value) shortens the run: the schedule is
    planned for ``cfg.epochs`` but training stops at the deadline, early enough
    for the precise-BN pass that follows, so budgeted searches never overrun.
    """
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    y_all = torch.from_numpy(labels.astype(np.int64))
    n = len(y_all)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = max(1, round(cfg.epochs * steps_per_epoch))
    net = net.to(memory_format=torch.channels_last)
    source = _batch_source(net, images, norm, cfg, prefix)
    net.train()
    soft = torch.from_numpy(teacher_logits) if teacher_logits is not None else None
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = _one_cycle(optimizer, cfg, total_steps)
    use_bf16 = cfg.bf16 and bf16_supported()
    mixing = np.random.default_rng(cfg.seed)
    started = time.monotonic()
    clock = _Clock(deadline, started, min(n, PRECISE_BN_IMAGES) if cfg.precise_bn else 0)
    step = 0
    epoch = 0
    while step < total_steps:
        order = torch.randperm(n, generator=generator)
        loss_sum = 0.0
        for start in range(0, n, cfg.batch_size):
            if step >= total_steps or clock.out_of_time():
                break
            idx = order[start : start + cfg.batch_size]
            x, flipped = source.batch(
                idx, cfg.flip, cfg.translate, generator, per_image=cfg.shift_per_image
            )
            y = y_all[idx]
            targets = soft[idx, flipped.long()] if soft is not None else None
            mix = Mix.draw(len(idx), cfg.mixup_alpha, mixing, generator)
            if mix is not None:
                x = mix.images(x)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                logits = source.forward(x)
            loss = _loss(logits.float(), y, cfg, targets, mix)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            clock.trained(len(idx))
            loss_sum += loss.item() * len(idx)
        epoch += 1
        if on_epoch is not None:
            on_epoch(
                EpochReport(epoch, math.ceil(cfg.epochs), loss_sum / n, time.monotonic() - started)
            )
        if clock.out_of_time():
            break
    source.finish(cfg.precise_bn)
    return net.eval()


class BatchSource(Protocol):
    """Where a training step's inputs come from and which layers they go through."""

    def batch(
        self,
        idx: torch.Tensor,
        flip: bool,
        translate: int,
        generator: torch.Generator,
        *,
        per_image: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def finish(self, precise_bn: bool) -> None: ...


@dataclass
class _WholeNetwork:
    """The plain case: augmented images through every layer."""

    net: nn.Module
    images: np.ndarray
    norm: Normalisation
    batch_size: int

    def batch(
        self,
        idx: torch.Tensor,
        flip: bool,
        translate: int,
        generator: torch.Generator,
        *,
        per_image: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm.apply(torch.from_numpy(self.images)[idx])
        return augment(x, flip, translate, generator, per_image=per_image)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(x)
        return logits

    def finish(self, precise_bn: bool) -> None:
        if precise_bn:
            recalibrate_batchnorm(self.net, self.images, self.norm.apply, self.batch_size)


def _batch_source(
    net: nn.Module,
    images: np.ndarray,
    norm: Normalisation,
    cfg: TrainConfig,
    prefix: PrefixCache | None,
) -> BatchSource:
    """The whole network on images, or the layers after a frozen prefix on its cache."""
    if not cfg.frozen_blocks:
        return _WholeNetwork(net, images, norm, cfg.batch_size)
    if not isinstance(net, Splittable):
        raise ValueError(f"frozen_blocks needs a network with a prefix, not {type(net)}")
    if prefix is None or prefix.blocks != cfg.frozen_blocks:
        prefix = PrefixCache.build(net, images, norm.apply, cfg.frozen_blocks)
    return prefix.attach(net)


PRECISE_BN_COST = 0.5
"""A precise-BN forward pass costs at most this share of a training step, per image."""


@dataclass
class _Clock:
    """When a run with a deadline must stop: early enough for its precise-BN pass.

    That pass runs after the last step (up to ``PRECISE_BN_IMAGES`` forward
    passes); its time is estimated from the steps so far. A 300 s retrain whose
    final fit stopped at its deadline and only then recomputed BatchNorm
    statistics ended 2 s late.
    """

    deadline: float | None
    started: float
    bn_images: int
    images: int = 0

    def trained(self, images: int) -> None:
        self.images += images

    def out_of_time(self) -> bool:
        if self.deadline is None:
            return False
        now = time.monotonic()
        per_image = (now - self.started) / self.images if self.images else 0.0
        return now + PRECISE_BN_COST * per_image * self.bn_images >= self.deadline


def _one_cycle(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Warm-up then cosine decay; very short runs (a few steps) keep a constant rate.

    OneCycleLR needs at least two steps in each phase (it divides by the phase
    length minus one), which tiny data sets at one epoch do not have.
    """
    warmup_steps = cfg.warmup_share * total_steps
    if warmup_steps < 2 or total_steps - warmup_steps < 2:
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=cfg.warmup_share
    )


def _loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    teacher_logits: torch.Tensor | None,
    mix: Mix | None = None,
) -> torch.Tensor:
    hard = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    if mix is not None:
        partner = F.cross_entropy(logits, y[mix.partner], label_smoothing=cfg.label_smoothing)
        hard = mix.weight * hard + (1 - mix.weight) * partner
    if teacher_logits is None or cfg.distill_alpha <= 0:
        return hard
    t = cfg.distill_temperature
    target = F.softmax(teacher_logits.float() / t, dim=1)
    if mix is not None:
        target = mix.targets(target)
    soft = F.kl_div(F.log_softmax(logits / t, dim=1), target, reduction="batchmean") * (t * t)
    return cfg.distill_alpha * soft + (1 - cfg.distill_alpha) * hard


def teacher_views(net: nn.Module, images: np.ndarray, norm: Normalisation) -> np.ndarray:
    """(N, 2, classes) logits of each image as is and mirrored: a teacher's soft targets."""
    plain = predict_logits(net, images, norm)
    mirrored = predict_logits(net, np.ascontiguousarray(images[:, :, ::-1]), norm)
    return np.stack([plain, mirrored], axis=1).astype(np.float32)


@torch.inference_mode()
def predict_logits(
    net: nn.Module,
    images: np.ndarray,
    norm: Normalisation,
    *,
    flip_tta: bool = False,
    batch_size: int = 64,
) -> np.ndarray:
    """Logits for uint8 NHWC images (optionally averaged with the mirrored image's)."""
    net = net.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = norm.apply(torch.from_numpy(images[start : start + batch_size]))
        logits = net(x).float()
        if flip_tta:
            logits = (logits + net(x.flip(3)).float()) / 2
        out.append(logits.numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)
