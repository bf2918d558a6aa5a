"""``synthdetect classify`` as a user runs it: a real subprocess, the bundled model, no servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from contracts import ErrorCode, ImageResult

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[2]
SAMPLE = REPO / "tests" / "data" / "cifake-sample"
TIMEOUT_S = 240


def synthdetect(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with the defaults a fresh install has (no SYNTHDETECT_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHDETECT_")}
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def parse_results(text: str) -> list[ImageResult]:
    return [ImageResult.model_validate_json(line) for line in text.splitlines()]


def test_classifying_the_sample_folder_is_accurate(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    run = synthdetect("classify", str(SAMPLE), "--labels-from-folders", "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    results = parse_results(out.read_text())
    expected = sorted(str(p) for p in SAMPLE.glob("*/*.jpg"))
    assert len(expected) == 400
    assert sorted(r.uri for r in results) == expected
    # CIFAKE is the default model's domain: it abstains on at most a few images (about 1 %)
    assert all(r.error is None or r.abstained for r in results)
    abstained = sum(r.abstained for r in results)
    assert abstained <= 8, f"{abstained} abstentions"
    assert all(r.domain is not None and r.domain.in_domain is not None for r in results)
    assert {r.true_label for r in results} == {"real", "synthetic"}
    labelled = [r for r in results if r.label is not None]
    correct = sum(r.label == r.true_label for r in labelled)
    assert correct / len(labelled) > 0.95, f"accuracy {correct / len(labelled):.2%}"
    assert "synthdetect classify" in run.stderr  # the summary table
    assert "total" in run.stderr
    assert "400 images" in run.stderr
    assert "accuracy against folder labels" in run.stderr


def test_bad_inputs_become_per_image_errors_on_stdout(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = next(SAMPLE.glob("real/*.jpg")).read_bytes()
    (folder / "good.jpg").write_bytes(good)
    (folder / "broken.jpg").write_bytes(good[: len(good) // 2])
    (folder / "notes.jpg").write_text("this is a text file, not a photo\n")
    missing = tmp_path / "no-such-file.png"

    run = synthdetect("classify", str(folder), str(missing))

    assert run.returncode == 0, run.stderr
    results = {Path(r.uri).name: r for r in parse_results(run.stdout)}
    assert set(results) == {"good.jpg", "broken.jpg", "notes.jpg", "no-such-file.png"}
    assert results["good.jpg"].label in {"real", "synthetic"}
    codes = {name: r.error.code for name, r in results.items() if r.error is not None}
    assert codes == {
        "broken.jpg": ErrorCode.CORRUPT_IMAGE,
        "notes.jpg": ErrorCode.UNSUPPORTED_FORMAT,
        "no-such-file.png": ErrorCode.NOT_FOUND,
    }
    # the summary goes to stderr only, so stdout stays pure JSON Lines
    assert "error: corrupt_image" in run.stderr
    assert "error: not_found" in run.stderr
    assert all(line.startswith("{") for line in run.stdout.splitlines())


def test_an_unknown_model_fails_the_command_with_a_clear_message(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    run = synthdetect("classify", str(SAMPLE), "--model", "nope", "-o", str(out))
    assert run.returncode != 0
    assert "Error:" in run.stderr
    assert "'nope'" in run.stderr
    assert "Traceback" not in run.stderr
    assert not out.exists()  # it failed before reading any image
