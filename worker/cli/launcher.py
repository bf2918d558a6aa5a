"""The ``synthdetect`` console script: check that the worker extra is installed, then run.

``pip install synthdetect`` installs the contracts alone (pydantic), for producers;
the command needs the ``worker`` extra. Without it the script says so in one line,
naming the missing packages and the install command, instead of an ImportError
traceback from wherever the first missing import happens to be. Only the standard
library is imported before the check.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from importlib import metadata
from typing import NoReturn

DISTRIBUTION = "synthdetect"
EXTRA = "worker"
INSTALL_HINT = "pip install 'synthdetect[worker]'"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def missing_requirements(requirements: Iterable[str], extra: str = EXTRA) -> list[str]:
    """The distributions that ``extra`` requires (``Requires-Dist`` lines with the marker
    ``extra == "<extra>"``) and that are not installed, in the order listed."""
    marker = re.compile(rf"""extra\s*==\s*["']{re.escape(extra)}["']""")
    missing = []
    for requirement in requirements:
        spec, _, markers = requirement.partition(";")
        name = _NAME.match(spec.strip())
        if name is None or not marker.search(markers) or name.group(0) == DISTRIBUTION:
            continue
        try:
            metadata.distribution(name.group(0))
        except metadata.PackageNotFoundError:
            missing.append(name.group(0))
    return missing


def _installed_requirements() -> list[str]:
    try:
        return metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:  # run from a source tree: the import check remains
        return []


def _exit_missing(what: str) -> NoReturn:
    sys.stderr.write(
        f"synthdetect: the command needs the worker extra, which is not installed "
        f"(missing: {what}).\nInstall it with: {INSTALL_HINT}\n"
        "(`pip install synthdetect` alone installs only the contracts, for producers.)\n"
    )
    raise SystemExit(1)


def main() -> None:
    """Entry point of the ``synthdetect`` script."""
    missing = missing_requirements(_installed_requirements())
    if missing:
        _exit_missing(", ".join(missing))
    try:
        from worker.cli.main import main as command_group
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] in ("worker", "contracts"):
            raise  # our own code is broken: that is a bug, not a missing extra
        _exit_missing(exc.name)
    command_group()


if __name__ == "__main__":
    main()
