"""The console's pages through the real app (lifespan, auth gate, engine) with TestClient:
what each form does, and the clear answer every bad request gets.

The browser test (``tests/e2e/test_console_browser.py``) walks the happy path in
Chromium with a real training run; here the training function is a stand-in
(``FakeRetrain``: publishes the tiny model with held-out predictions) so that the
run page, its server-sent events and its figures are checked in well under a second.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.testclient import TestClient

from tests.support.serving import PASSWORD, USER, Served, app_for, prepare
from tests.support.tiny_model import tiny_model
from tests.unit.serve.test_training_runs import FakeRetrain
from worker.serve.console.label_pages import shortcuts
from worker.serve.console.state import console_of
from worker.serve.training_runs import TrainingRuns

SAMPLE = Path(__file__).parents[2] / "data" / "cifake-sample"
REAL = sorted((SAMPLE / "real").glob("*.jpg"))
SYNTHETIC = sorted((SAMPLE / "synthetic").glob("*.jpg"))
PAGES = ["/", "/invoke", "/datasets", "/label", "/train", "/review", "/models"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    root = tmp_path_factory.mktemp("console")
    return prepare(root, model_registry=str(root / "models"), alias_poll_s=0)


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    with TestClient(app_for(served)) as client:
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
        assert token
        answer = client.post(
            "/login",
            data={"username": USER, "password": PASSWORD, "csrf_token": token.group(1)},
            follow_redirects=False,
        )
        assert answer.status_code == 303
        yield client


@pytest.fixture(scope="module")
def csrf(client: TestClient) -> str:
    match = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text)
    assert match
    return match.group(1)


@pytest.fixture(scope="module")
def fake_retrain(client: TestClient) -> FakeRetrain:
    """Swap the console's training function for the stand-in (released at once)."""
    retrain = FakeRetrain()
    retrain.release.set()
    console = console_of(_request(client))
    runs = console.runs
    console.runs = TrainingRuns(
        runs.settings, runs.store, runs.storage, runs.registry, runs.datasets, runs.root, retrain
    )
    return retrain


def _request(client: TestClient) -> object:
    """A stand-in request: ``console_of`` only reads ``request.app``."""

    class _Request:
        app = client.app

    return _Request()


def flash(response: object) -> tuple[str | None, str | None]:
    """(msg, err) of the redirect a form answered with."""
    query = parse_qs(urlsplit(str(response.url)).query)  # type: ignore[attr-defined]
    return (query.get("msg", [None])[0], query.get("err", [None])[0])


def files(paths: list[Path], folder: bool = True) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        ("files", (f"{p.parent.name}/{p.name}" if folder else p.name, p.read_bytes(), "image/jpeg"))
        for p in paths
    ]


@pytest.fixture(scope="module")
def dataset(client: TestClient, csrf: str) -> str:
    """A dataset of 24 labelled and 8 unlabelled sample images."""
    client.post("/datasets", data={"name": "pages", "csrf_token": csrf})
    client.post(
        f"/datasets/pages/upload?csrf_token={csrf}",
        data={"labels": "folders"},
        files=files(REAL[:12] + SYNTHETIC[:12]),
    )
    client.post(
        f"/datasets/pages/upload?csrf_token={csrf}",
        data={"labels": "none"},
        files=files(REAL[12:16] + SYNTHETIC[12:16], folder=False),
    )
    return "pages"


def test_every_page_renders_for_a_user_and_none_for_a_visitor(
    client: TestClient, dataset: str
) -> None:
    for path in [*PAGES, f"/datasets/{dataset}", f"/label/{dataset}"]:
        page = client.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert 'name="csrf-token"' in page.text
        assert "cdn" not in page.text.lower()
    session = dict(client.cookies)
    client.cookies.clear()
    try:
        for path in PAGES:
            answer = client.get(path, follow_redirects=False)
            assert answer.status_code == 303
            assert answer.headers["location"].startswith("/login?next=")
    finally:
        client.cookies.update(session)


def test_forms_without_the_csrf_token_are_refused(client: TestClient, dataset: str) -> None:
    assert client.post("/datasets", data={"name": "x"}).status_code == 403
    upload = client.post(f"/datasets/{dataset}/upload", files=files(REAL[:1]))
    assert upload.status_code == 403
    assert client.post("/models/default/rollback").status_code == 403


def test_creating_a_dataset_says_what_is_wrong(client: TestClient, csrf: str) -> None:
    created = client.post(
        "/datasets", data={"name": "made", "labels": "cat, dog", "csrf_token": csrf}
    )
    assert flash(created)[0] == "dataset made created: now add images"
    again = client.post("/datasets", data={"name": "made", "csrf_token": csrf})
    assert flash(again)[1] == "a dataset named 'made' exists already"
    bad = client.post("/datasets", data={"name": "Bad Name", "csrf_token": csrf})
    assert "cannot name a dataset" in (flash(bad)[1] or "")
    assert client.get("/datasets/nothing").status_code == 404


def test_uploads_report_added_duplicate_and_refused_files(
    client: TestClient, csrf: str, dataset: str
) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("real/again.jpg", REAL[0].read_bytes())
        zipped.writestr("synthetic/new.jpg", SYNTHETIC[20].read_bytes())
        zipped.writestr("notes/readme.txt", b"not an image")
    answer = client.post(
        f"/datasets/{dataset}/upload?csrf_token={csrf}",
        data={"labels": "folders"},
        files=[
            ("files", ("set.zip", archive.getvalue(), "application/zip")),
            ("files", ("broken.jpg", b"\xff\xd8 not really", "image/jpeg")),
        ],
    )
    message, error = flash(answer)
    assert error is None
    assert message == "1 images added, 1 already there, 1 labelled, 2 refused"
    rejected = parse_qs(urlsplit(str(answer.url)).query)["rejected"]
    assert [line.split(":")[0] for line in rejected] == ["notes/readme.txt", "broken.jpg"]
    assert "Refused files" in answer.text
    nothing = client.post(
        f"/datasets/{dataset}/upload?csrf_token={csrf}",
        data={"labels": "none"},
        files={"files": ("", b"", "application/octet-stream")},
    )
    assert flash(nothing)[1] == "choose files, a folder or an archive"
    fixed = client.post(
        f"/datasets/{dataset}/upload?csrf_token={csrf}",
        data={"labels": "fixed", "label": ""},
        files=files(REAL[:1]),
    )
    assert flash(fixed)[1] == "choose the label to give every image"
    prefix = client.post(f"/datasets/{dataset}/prefix", data={"prefix": "/etc", "csrf_token": csrf})
    assert "s3://" in (flash(prefix)[1] or "")


def test_previews_are_re_encoded_jpegs(client: TestClient, dataset: str) -> None:
    page = client.get(f"/datasets/{dataset}").text
    key = re.search(rf"/datasets/{dataset}/images/([0-9a-f]+)", page)
    assert key
    preview = client.get(f"/datasets/{dataset}/images/{key.group(1)}?size=64")
    assert preview.status_code == 200
    assert preview.headers["content-type"] == "image/jpeg"
    assert preview.content[:2] == b"\xff\xd8"
    assert client.get(f"/datasets/{dataset}/images/{'0' * 24}").status_code == 404
    odd = client.get(f"/datasets/{dataset}/images/{key.group(1)}?size=huge")
    assert odd.status_code == 200


def test_the_label_queue_labels_one_or_many_and_refuses_unknown_labels(
    client: TestClient, csrf: str, dataset: str
) -> None:
    page = client.get(f"/label/{dataset}").text
    assert "ordered by the doubt of <strong>default@1</strong>" in page
    keys = re.findall(r'name="key" value="([0-9a-f]+)"', page)
    assert len(keys) >= 3
    one = client.post(
        f"/label/{dataset}", data={"key": keys[0], "label": "real", "csrf_token": csrf}
    )
    assert flash(one)[0] == "labelled 1 image real"
    bulk = client.post(
        f"/label/{dataset}",
        data={"key": keys[1:3], "label": "synthetic", "csrf_token": csrf},
    )
    assert flash(bulk)[0] == "labelled 2 images synthetic"
    wrong = client.post(
        f"/label/{dataset}", data={"key": keys[0], "label": "cat", "csrf_token": csrf}
    )
    assert "is not a label" in (flash(wrong)[1] or "")
    none = client.post(f"/label/{dataset}", data={"label": "real", "csrf_token": csrf})
    assert flash(none)[1] == "select at least one image"
    assert shortcuts(["real", "synthetic"]) == [("real", "r", "1"), ("synthetic", "s", "2")]
    assert shortcuts(["spam", "sham"]) == [("spam", "", "1"), ("sham", "", "2")]


def test_review_filters_and_fixes_a_label_in_place(
    client: TestClient, csrf: str, dataset: str
) -> None:
    page = client.get(f"/review?dataset={dataset}&sort=-confidence&true=real").text
    assert "default@1 on" in page
    trues = re.findall(r'<td class="true">([^<]+)</td>', page)
    assert trues
    assert set(trues) == {"real"}
    key = re.search(r'name="key" value="([0-9a-f]+)"', page)
    assert key
    here = f"/review?dataset={dataset}&sort=-confidence&true=real"
    fixed = client.post(
        f"/label/{dataset}",
        data={"key": key.group(1), "label": "synthetic", "back": here, "csrf_token": csrf},
    )
    assert fixed.url.path == "/review"
    assert parse_qs(fixed.url.query.decode())["true"] == ["real"]
    assert flash(fixed)[0] == "labelled 1 image synthetic"
    assert key.group(1) not in fixed.text  # no longer a "real" image
    unlabelled = client.get(f"/review?dataset={dataset}&unlabelled=1").text
    assert set(re.findall(r'<td class="true">([^<]+)</td>', unlabelled)) == {"unlabelled"}
    for away in ("//evil.example", "/\\evil.example", "https://evil.example/"):
        elsewhere = client.post(
            f"/label/{dataset}",
            data={"key": key.group(1), "label": "real", "back": away, "csrf_token": csrf},
            follow_redirects=False,
        )
        assert elsewhere.headers["location"].startswith(f"/label/{dataset}?")


def test_invoke_answers_with_scores_domain_and_provenance(client: TestClient, csrf: str) -> None:
    answer = client.post(
        f"/invoke?csrf_token={csrf}",
        files={"image": ("x.jpg", SYNTHETIC[0].read_bytes(), "image/jpeg")},
    )
    assert answer.status_code == 200
    assert re.search(r'class="verdict (real|synthetic)"', answer.text)
    for part in ("default@1", "Domain", "Provenance", "data:image/jpeg;base64,"):
        assert part in answer.text
    broken = client.post(
        f"/invoke?csrf_token={csrf}", files={"image": ("x.jpg", b"nope", "image/jpeg")}
    )
    assert "corrupt_image" in broken.text or "unsupported_format" in broken.text
    empty = client.post(
        f"/invoke?csrf_token={csrf}",
        data={"model": "default"},
        files={"image": ("", b"", "application/octet-stream")},
    )
    assert empty.status_code == 400
    assert "choose an image first" in empty.text
    unknown = client.post(
        f"/invoke?csrf_token={csrf}",
        data={"model": "nope"},
        files={"image": ("x.jpg", SYNTHETIC[0].read_bytes(), "image/jpeg")},
    )
    assert unknown.status_code == 422
    assert "unknown model" in unknown.text


def test_a_training_run_streams_its_events_then_shows_its_result(
    client: TestClient, csrf: str, dataset: str, fake_retrain: FakeRetrain
) -> None:
    refused = client.post("/train", data={"dataset": "made", "budget_s": "60", "csrf_token": csrf})
    assert flash(refused)[1] == "label images of at least two labels first"
    short = client.post("/train", data={"dataset": dataset, "budget_s": "1", "csrf_token": csrf})
    assert "budget" in (flash(short)[1] or "")
    started = client.post(
        "/train",
        data={"dataset": dataset, "budget_s": "60", "promotion": "never", "csrf_token": csrf},
    )
    run_id = started.url.path.rsplit("/", 1)[1]
    with client.stream("GET", f"/train/{run_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in stream.iter_lines() if line]
    assert lines[0] == "id: 1"
    assert lines[-2:] == ["event: done", 'data: {"status": "succeeded"}']
    assert any("published" in line for line in lines)
    resumed = client.get(f"/train/{run_id}/events", headers={"Last-Event-ID": "2"}).text
    assert "id: 1\n" not in resumed
    assert "id: 3\n" in resumed
    page = client.get(f"/train/{run_id}").text
    assert 'id="gate"' in page
    assert "the promotion policy is &#39;never&#39;" in page
    for figure in ("confusion.png", "reliability.png"):
        png = client.get(f"/train/{run_id}/figures/{figure}")
        assert png.content[:4] == b"\x89PNG"
    assert client.get(f"/train/{run_id}/figures/other.png").status_code == 404
    assert client.get("/train/unknown").status_code == 404
    assert fake_retrain.requests[-1].budget.seconds == 60


def test_models_promote_and_roll_back(client: TestClient, csrf: str, served: Served) -> None:
    console = console_of(_request(client))
    card, data = tiny_model("default", "7")
    console.services.registry.publish(card, data)
    page = client.get("/models").text
    assert 'id="version-default-7"' in page
    assert "/models/default/7/report" not in page  # published without a training report
    promoted = client.post("/models/default/promote", data={"version": "7", "csrf_token": csrf})
    assert flash(promoted)[0] == "default@7 is production now"
    missing = client.post("/models/default/promote", data={"version": "99", "csrf_token": csrf})
    assert "not promoted" in (flash(missing)[1] or "")
    back = client.post("/models/default/rollback", data={"csrf_token": csrf})
    assert flash(back)[0] == "default rolled back: production is 1 again"
    again = client.post("/models/default/rollback", data={"csrf_token": csrf})
    assert "no earlier version" in (flash(again)[1] or "")
    assert client.get("/models/default/7/report").status_code == 404


def test_without_a_registry_the_console_refuses_to_publish(
    tmp_path: Path,
) -> None:
    served = prepare(tmp_path)  # no SYNTHDETECT_MODEL_REGISTRY: only the bundled models
    with TestClient(app_for(served)) as client:
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
        assert token
        client.post(
            "/login", data={"username": USER, "password": PASSWORD, "csrf_token": token.group(1)}
        )
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text)
        assert csrf
        answer = client.post(
            "/models/default/promote", data={"version": "1", "csrf_token": csrf.group(1)}
        )
        assert "set SYNTHDETECT_MODEL_REGISTRY" in (flash(answer)[1] or "")
