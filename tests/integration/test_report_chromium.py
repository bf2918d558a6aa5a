"""The review report in a real browser: headless Chromium (Debian package ``chromium``).

The report itself has no JavaScript. To see whether every image decoded, the test
renders a copy with a probe script appended: on ``load`` it writes each image's class,
``complete`` and ``naturalWidth`` into a ``<pre>``, and ``--dump-dom`` prints the DOM
after that. A second run screenshots the unmodified report and checks it is not blank.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest
from PIL import Image

from contracts import ImageResult, ModelId
from worker.review.report import render_report
from worker.storage import Storage

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)"
    ),
]

_PROBE = """<pre id="probe"></pre><script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => [i.className, i.complete, i.naturalWidth]);
  document.getElementById("probe").textContent = JSON.stringify(images);
});
</script>"""


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=True)


@pytest.fixture
def report(tmp_path: Path) -> Path:
    """A report over six 32x32 images, two of them misclassified."""
    model = ModelId(name="default", version="1")
    results = []
    for k in range(6):
        true = "real" if k % 2 else "synthetic"
        label = true if k < 4 else ("synthetic" if true == "real" else "real")
        path = tmp_path / f"{true}-{k}.png"
        Image.new("RGB", (32, 32), (30 * k, 120, 255 - 30 * k)).save(path)
        confidence = 0.55 + 0.07 * k
        other = "real" if label == "synthetic" else "synthetic"
        results.append(
            ImageResult(
                uri=str(path),
                label=label,
                confidence=confidence,
                scores={label: confidence, other: 1 - confidence},
                model=model,
                true_label=true,
            )
        )
    page = render_report(results, "chromium check", Storage(_no_s3))
    out = tmp_path / "report.html"
    out.write_text(page, encoding="utf-8")
    return out


def _no_s3() -> NoReturn:
    raise AssertionError("the report must not touch S3 here")


def test_every_image_in_the_report_loads(report: Path, tmp_path: Path) -> None:
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", _PROBE + "</body>"))
    dom = chromium(tmp_path, "--dump-dom", probed.as_uri()).stdout
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.DOTALL)
    assert match, f"no probe output in the dumped DOM: {dom[:500]}"
    images = json.loads(match.group(1))
    assert [c for c, _, _ in images].count("plot") == 4
    assert [c for c, _, _ in images].count("thumb") == 6
    assert all(complete and width > 0 for _, complete, width in images), images
    assert {width for c, _, width in images if c == "thumb"} == {96}


def test_the_report_renders_without_scripts(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    chromium(tmp_path, "--window-size=1000,1400", f"--screenshot={shot}", report.as_uri())
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None
    assert len(colours) > 200, "the screenshot is (nearly) blank"
