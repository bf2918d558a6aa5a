"""Device logic, checked on a CPU: execution plans, precision, and the guarded pinned path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.tiny_model import TINY_INPUT_SIZE, tiny_model
from worker.inference.device import CUDA_RUNNERS, ExecutionPlan
from worker.inference.model import load_model
from worker.inference.staging import PinnedStaging

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_a_cpu_runs_one_single_threaded_runner_per_core_in_fp32() -> None:
    plan = ExecutionPlan.choose(CPU, precision="bf16", cores=8)
    assert (plan.runners, plan.torch_threads, plan.autocast_dtype) == (8, 1, None)
    assert not plan.pinned_transfers


def test_cpu_runners_share_the_cores_when_fewer_are_asked_for() -> None:
    assert ExecutionPlan.choose(CPU, runners=2, cores=8).torch_threads == 4
    assert ExecutionPlan.choose(CPU, runners=3, torch_threads=5, cores=8).torch_threads == 5


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", None)]
)
def test_cuda_overlaps_two_runners_with_pinned_copies_in_the_chosen_precision(
    precision: str, dtype: torch.dtype | None
) -> None:
    plan = ExecutionPlan.choose(CUDA, precision=precision, cores=16)  # type: ignore[arg-type]
    assert (plan.runners, plan.torch_threads, plan.autocast_dtype) == (CUDA_RUNNERS, 1, dtype)
    assert plan.pinned_transfers


def test_pinned_staging_is_refused_for_a_cpu_device() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        PinnedStaging(CPU)


def test_a_cpu_model_never_pins_memory_or_touches_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("a CPU model must not pin memory or use CUDA streams")

    monkeypatch.setattr(torch.Tensor, "pin_memory", forbidden)
    monkeypatch.setattr(torch.cuda, "Stream", forbidden)
    monkeypatch.setattr(torch.cuda, "is_available", forbidden)
    model = load_model(*tiny_model(), CPU, autocast_dtype=torch.bfloat16)
    images = np.zeros((3, *TINY_INPUT_SIZE, 3), dtype=np.uint8)
    probs = model.predict_proba(images)
    assert probs.dtype == np.float32
    assert probs.shape[0] == 3
