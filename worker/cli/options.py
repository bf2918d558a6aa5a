"""Click options that several commands share, defined once.

``train`` (local) and ``submit-retrain`` (queue) take the same retrain options;
``submit`` and ``submit-retrain`` the same callback and idempotency options.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

_DURATION = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>s|m|h)?$")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``5m`` or ``1.5h`` -> seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise click.BadParameter(f"{text!r} is not a duration like 60s, 5m or 1h")
    return float(match["n"]) * {"s": 1, "m": 60, "h": 3600}[match["unit"] or "s"]


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def registry_option(help_text: str) -> Callable[[F], F]:
    """``--registry``: a registry root (folder or s3://) instead of SYNTHDETECT_MODEL_REGISTRY."""
    return click.option("--registry", default=None, help=help_text)


retrain_options = _stack(
    click.option("--name", default=None, help="Model name (default: SYNTHDETECT_DEFAULT_MODEL)."),
    click.option(
        "--budget",
        "budget_text",
        default="5m",
        show_default=True,
        help="Time for the whole run: search, CV, final fit, export (e.g. 60s, 5m, 1h).",
    ),
    click.option(
        "--trials",
        type=click.IntRange(1, 1000),
        default=None,
        help="Most candidates to screen (default: as many as the budget allows, up to 3).",
    ),
    click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True),
    click.option(
        "--holdout-share", type=click.FloatRange(0.01, 0.89), default=0.2, show_default=True
    ),
    click.option(
        "--promotion",
        type=click.Choice(["if_not_worse", "always", "never"]),
        default="if_not_worse",
        show_default=True,
    ),
    click.option(
        "--margin",
        type=click.FloatRange(0, 1),
        default=0.0,
        show_default=True,
        help="Promote if held-out accuracy >= production's minus this.",
    ),
    click.option("--seed", type=int, default=0, show_default=True),
)
"""The retrain knobs of ``train`` and ``submit-retrain``: name, budget_text, trials, folds,
holdout_share, promotion, margin, seed."""

job_options = _stack(
    click.option("--callback", default=None, help="Webhook URL that receives the signed summary."),
    click.option(
        "--secret-ref",
        default="default",
        show_default=True,
        help="Name of the worker's signing secret.",
    ),
    click.option("--job-id", default=None, help="Idempotency key (default: a new UUID)."),
)
"""What every submitted job may carry: callback, secret_ref, job_id."""


def wait_option(help_text: str) -> Callable[[F], F]:
    """``--wait SECONDS``: poll for the job's summary and print it."""
    return click.option("--wait", "wait_s", type=float, default=None, help=help_text)
