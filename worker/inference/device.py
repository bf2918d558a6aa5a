"""Choosing where models run.

CUDA is touched only here and only when a model is loaded, never at import
time: a process that forks workers (prefork pools) must not have initialised
CUDA before the fork.
"""

from __future__ import annotations

from typing import Literal

import torch

from worker.errors import ModelError


def select_device(preference: Literal["auto", "cpu", "cuda"]) -> torch.device:
    """CUDA when asked for or when ``auto`` finds a GPU; the CPU otherwise."""
    if preference == "cpu":
        return torch.device("cpu")
    has_cuda = torch.cuda.is_available()
    if preference == "cuda" and not has_cuda:
        raise ModelError("SYNTHDETECT_DEVICE=cuda but no CUDA device is available")
    return torch.device("cuda") if has_cuda else torch.device("cpu")


def configure_cpu_threads(threads: int) -> None:
    """Pin torch's intra-op thread count (0 keeps torch's default of one per core)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
