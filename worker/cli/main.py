"""The ``synthdetect`` command: one group whose commands load their module when run.

Each command lives in the module of its road (``worker.cli.classify``,
``worker.cli.worker``, ...). The group imports a command's module only when that
command runs (or ``--help`` lists it), so ``synthdetect classify`` never imports
Celery or the training code, and ``synthdetect worker`` never imports the
report or training code unless it consumes the retrain queue.
"""

from __future__ import annotations

import importlib

import click

COMMANDS: dict[str, tuple[str, str]] = {
    "classify": ("worker.cli.classify", "classify"),
    "review": ("worker.cli.review", "review"),
    "worker": ("worker.cli.worker", "worker"),
    "queues": ("worker.cli.worker", "queues"),
    "submit": ("worker.cli.submit", "submit"),
    "submit-retrain": ("worker.cli.submit", "submit_retrain"),
    "train": ("worker.cli.retrain", "train"),
    "models": ("worker.cli.models", "models"),
    "serve": ("worker.cli.serve", "serve"),
    "users": ("worker.cli.serve", "users"),
    "apikeys": ("worker.cli.serve", "apikeys"),
}
"""Command name -> (module, attribute)."""


class LazyGroup(click.Group):
    """A click group that imports each command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attribute = target
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module}.{attribute} is not a click command")
        return command


@click.group(cls=LazyGroup)
@click.version_option(package_name="synthdetect")
def main() -> None:
    """synthdetect: tell real photos from AI-generated images."""


if __name__ == "__main__":
    main()
