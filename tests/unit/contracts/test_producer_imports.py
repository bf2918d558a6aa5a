"""The contracts are the producers' package: they load without the worker's dependencies.

Two checks, each in a fresh interpreter:

- in this environment, importing ``contracts``, ``contracts.producer`` and
  ``contracts.schema_files`` loads no torch, Pillow, Celery, matplotlib or numpy (and
  kombu and boto3 only when a publisher is made);
- in an environment holding only pydantic and its dependencies (what ``pip install
  synthdetect`` installs), the contracts work, the publishers name the ``producer``
  extra, and the ``synthdetect`` script names the ``worker`` extra instead of raising
  an ImportError.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from worker.cli.launcher import INSTALL_HINT, missing_requirements

REPO = Path(__file__).parents[3]
WORKER_ONLY = ("torch", "PIL", "celery", "matplotlib", "numpy")
PRODUCER_ONLY = ("kombu", "boto3", "botocore")


def run_python(
    code: str, *args: str, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, *args, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )


def test_importing_the_contracts_loads_no_worker_dependency() -> None:
    result = run_python(
        """
        import json, sys
        import contracts, contracts.producer, contracts.schema_files
        contracts.schema_files.expected_files()  # generating the schemas loads nothing more
        loaded = sorted({name.split(".")[0] for name in sys.modules})
        print(json.dumps(loaded))
        """
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert not loaded & {*WORKER_ONLY, *PRODUCER_ONLY}, sorted(loaded)


def pydantic_only_site(root: Path) -> Path:
    """A folder holding pydantic and its dependencies, synthdetect's packages and its
    metadata, as links into this environment: what ``pip install synthdetect`` installs."""
    site = root / "site-packages"
    site.mkdir()
    wanted, seen = ["pydantic"], set()
    while wanted:
        dist = metadata.distribution(wanted.pop())
        if dist.metadata["Name"] in seen:
            continue
        seen.add(dist.metadata["Name"])
        tops = {Path(str(file)).parts[0] for file in dist.files or []}
        for top in tops - {"..", "__pycache__"}:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
        # Unconditional requirements only: pydantic's others are extras or other platforms.
        wanted += [
            match.group(0)
            for req in dist.requires or []
            if ";" not in req and (match := re.match(r"[A-Za-z0-9._-]+", req))
        ]
    for package in ("contracts", "worker"):
        (site / package).symlink_to(REPO / package)
    # synthdetect's metadata (Requires-Dist with the extras), from this editable install.
    [info] = [
        found
        for entry in map(Path, filter(None, sys.path))
        for pattern in ("synthdetect-*.dist-info", "synthdetect.egg-info")
        for found in sorted(entry.glob(pattern))[:1]
    ][:1]
    (site / info.name).symlink_to(info)
    return site


@pytest.fixture(scope="module")
def bare_install(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Interpreter arguments for the base Python with nothing but ``pydantic_only_site``."""
    site = pydantic_only_site(tmp_path_factory.mktemp("bare"))
    prelude = f"import sys; sys.path[:0] = [{str(site)!r}]; "
    return ["-I", "-S", "-c", prelude]


def run_bare(bare_install: list[str], code: str) -> subprocess.CompletedProcess[str]:
    flags, prelude = bare_install[:2], bare_install[3]
    return run_python(prelude + textwrap.dedent(code), *flags, python=sys._base_executable)


def test_a_bare_install_has_only_pydantic(bare_install: list[str]) -> None:
    result = run_bare(
        bare_install,
        """
        import importlib.util
        print([m for m in ("torch", "numpy", "click", "kombu", "boto3", "celery")
               if importlib.util.find_spec(m)])
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_contracts_work_in_a_bare_install(bare_install: list[str]) -> None:
    result = run_bare(
        bare_install,
        """
        import contracts, contracts.producer, contracts.schema_files
        from contracts import ClassifyJob
        job = ClassifyJob.model_validate_json(
            '{"job_id": "j1", "inputs": {"kind": "prefix", "prefix": "s3://inbox/x/"},'
            ' "output": {"uri": "s3://outbox/r"}}'
        )
        assert contracts.producer.message_body(job).startswith(b'{"schema_version":1')
        assert len(contracts.schema_files.expected_files()) == 7
        for make in (lambda: contracts.producer.AmqpPublisher("amqp://x"),
                     lambda: contracts.producer.SqsPublisher()):
            try:
                make()
            except ModuleNotFoundError as exc:
                print(exc)
        """,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert "needs kombu" in lines[0]
    assert "needs boto3" in lines[1]
    assert all("pip install 'synthdetect[producer]'" in line for line in lines)


def test_the_command_names_the_worker_extra_in_a_bare_install(bare_install: list[str]) -> None:
    result = run_bare(
        bare_install,
        """
        sys.argv = ["synthdetect", "classify", "--help"]
        from worker.cli.launcher import main
        main()
        """,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert INSTALL_HINT in result.stderr
    assert "Traceback" not in result.stderr
    assert "missing: torch, numpy" in result.stderr  # read from the extra in the metadata


def test_missing_requirements_reads_the_extra_markers() -> None:
    requires = [
        "pydantic<3,>=2.7",
        'click>=8.1; extra == "worker"',
        'surely-not-installed-dist>=1; extra == "worker"',
        'celery[sqs]<6,>=5.4; extra == "worker"',
        'another-missing-one; extra == "test"',
        'synthdetect[worker]; extra == "test"',
    ]
    assert missing_requirements(requires, "worker") == ["surely-not-installed-dist"]
    assert missing_requirements(requires, "test") == ["another-missing-one"]


def test_the_installed_worker_extra_is_complete_here() -> None:
    assert missing_requirements(metadata.requires("synthdetect") or [], "worker") == []
