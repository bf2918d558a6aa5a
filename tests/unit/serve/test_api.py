"""The invoke API through the real app (lifespan, auth gate, engine, pipeline) with
Starlette's TestClient: auth, every input form, every error code, limits, batches."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from contracts import ImageResult, ModelRef
from tests.support.provenance_files import jpeg_with_xmp, xmp
from tests.support.serving import Served, app_for, prepare
from worker.classify.inputs import expand_paths
from worker.classify.pipeline import PipelineConfig, classify_items
from worker.imaging import ImageLimits
from worker.serve.auth import create_api_key
from worker.storage import Storage

SAMPLE = Path(__file__).parents[2] / "data" / "cifake-sample"
REAL = sorted((SAMPLE / "real").glob("*.jpg"))
SYNTHETIC = sorted((SAMPLE / "synthetic").glob("*.jpg"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return prepare(
        tmp_path_factory.mktemp("serve"),
        serve_max_request_bytes=200_000,
        serve_max_batch_images=4,
        max_image_pixels=1_000_000,
    )


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    with TestClient(app_for(served)) as client:
        client.headers.update(served.auth)
        yield client


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def assert_refused(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert error_of(response) == code


def error_of(response: object) -> str:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return str(body["error"]["code"])


# --- auth ------------------------------------------------------------------------------------


def test_no_key_bad_key_and_malformed_key_get_401(client: TestClient) -> None:
    image = REAL[0].read_bytes()
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer sdk_nope_nope"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Basic YW5uOnB3"},
    ):
        response = client.post("/v1/invoke", content=image, headers=headers)
        assert response.status_code == 401
        assert error_of(response) == "unauthenticated"
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_revoked_key_is_refused_at_once(client: TestClient, served: Served) -> None:
    record, key = create_api_key(served.store, "short-lived", "tests")
    headers = {"Authorization": f"Bearer {key}", "content-type": "image/jpeg"}
    image = REAL[0].read_bytes()
    assert client.post("/v1/invoke", content=image, headers=headers).status_code == 200
    assert served.store.revoke_api_key(record.id)
    response = client.post("/v1/invoke", content=image, headers=headers)
    assert_refused(response, 401, "unauthenticated")


def test_a_key_with_the_right_id_and_a_wrong_secret_is_refused(
    client: TestClient, served: Served
) -> None:
    key_id = served.api_key.split("_")[1]
    response = client.post(
        "/v1/invoke",
        content=REAL[0].read_bytes(),
        headers={"Authorization": f"Bearer sdk_{key_id}_{'x' * 43}"},
    )
    assert response.status_code == 401


# --- the three ways in, and the answer -------------------------------------------------------


def expected_results(served: Served, paths: list[Path]) -> list[ImageResult]:
    """What the job pipeline answers for the same files (the CLI's road: local paths)."""
    from worker.inference.engine import InferenceEngine

    storage = Storage.from_settings(served.settings)
    engine = InferenceEngine.from_settings(served.settings, storage)
    try:
        items = expand_paths([str(p) for p in paths], storage, served.settings.max_image_bytes)
        return list(
            classify_items(
                items,
                engine,
                ModelRef(name="default"),
                ImageLimits.from_settings(served.settings),
                PipelineConfig.from_settings(served.settings),
            )
        )
    finally:
        engine.close()


def comparable(result: dict[str, object]) -> object:
    """The result without its uri; floats rounded (a batch of 3 and one of 1 may differ in
    the last bits: the BLAS kernel depends on the batch size)."""

    def rounded(value: object) -> object:
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        return value

    return rounded({k: v for k, v in result.items() if k != "uri"})


def test_raw_multipart_and_batch_answers_equal_the_job_pipelines(
    client: TestClient, served: Served
) -> None:
    paths = [REAL[0], SYNTHETIC[0], REAL[1]]
    expected = [
        comparable(r.model_dump(mode="json", exclude_none=True))
        for r in expected_results(served, paths)
    ]
    raw = client.post(
        "/v1/invoke", content=paths[0].read_bytes(), headers={"content-type": "image/jpeg"}
    )
    assert raw.status_code == 200
    assert raw.json()["uri"] == "upload:body"
    assert comparable(raw.json()) == expected[0]
    form = client.post("/v1/invoke", files={"image": ("cat.jpg", paths[1].read_bytes())})
    assert form.status_code == 200
    assert form.json()["uri"] == "upload:cat.jpg"
    assert comparable(form.json()) == expected[1]
    batch = client.post(
        "/v1/invoke/batch",
        files=[("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths],
    )
    assert batch.status_code == 200
    results = batch.json()["results"]
    assert [r["uri"] for r in results] == [f"upload:{p.name}" for p in paths]
    assert [comparable(r) for r in results] == expected


def test_an_answer_carries_label_scores_domain_provenance_and_model(client: TestClient) -> None:
    body = client.post("/v1/invoke", content=SYNTHETIC[0].read_bytes()).json()
    ImageResult.model_validate(body)
    assert body["label"] in ("real", "synthetic")
    assert set(body["scores"]) == {"real", "synthetic"}
    assert abs(sum(body["scores"].values()) - 1) < 1e-6
    assert body["model"]["name"] == "default"
    assert body["model"]["version"]
    assert body["domain"]["in_domain"] is True
    assert body["decided_by"] == "model"
    assert "provenance" not in body  # a plain CIFAKE JPEG carries none


def test_provenance_metadata_is_reported(client: TestClient) -> None:
    image = jpeg_with_xmp(xmp("trainedAlgorithmicMedia", creator_tool="Some Generator 2"))
    body = client.post("/v1/invoke", content=image).json()
    assert body["provenance"]["ai_generated"] is True
    assert body["provenance"]["validated"] is False  # unsigned metadata: reported only


def test_an_out_of_domain_image_is_an_answer_not_an_error(client: TestClient) -> None:
    response = client.post("/v1/invoke", content=png(900, 700))
    assert response.status_code == 200
    body = response.json()
    assert body["label"] is None if "label" in body else True
    assert body["error"]["code"] == "out_of_domain"
    assert body["domain"]["in_domain"] is False
    assert body["scores"]


def test_a_pinned_model_version_is_used(client: TestClient) -> None:
    response = client.post("/v1/invoke?model=default@1", content=REAL[0].read_bytes())
    assert response.status_code == 200
    assert response.json()["model"] == {"name": "default", "version": "1"}


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"this is not an image"}, 415, "unsupported_format"),
        ({"content": b"\x89PNG\r\n\x1a\n" + b"\0" * 40}, 422, "corrupt_image"),
        ({"content": b""}, 400, "no_image"),
        ({"content": b"x" * 200_001}, 413, "payload_too_large"),
        (
            {
                "content": b"uri=s3://a/b",
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
            415,
            "unsupported_media_type",
        ),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "bad_request",
        ),
        ({"json": {"url": "s3://a/b"}}, 422, "invalid_request"),
        ({"json": {"uri": 7}}, 422, "invalid_request"),
        ({"json": {"uri": "file:///etc/passwd"}}, 400, "bad_uri"),
        ({"json": {"uri": "/etc/passwd"}}, 400, "bad_uri"),
        ({"json": {"uri": "s3://bucket-only"}}, 400, "bad_uri"),
        ({"json": {"uri": "http://127.0.0.1:9/x.jpg"}}, 400, "uri_refused"),
        ({"json": {"uri": "http://169.254.169.254/latest/meta-data"}}, 400, "uri_refused"),
        ({"json": {"uri": "https://localhost/x.jpg"}}, 400, "uri_refused"),
        ({"json": {"uri": "http://[::1]/x.jpg"}}, 400, "uri_refused"),
        ({"data": {"note": "no file"}, "files": {}}, 400, "no_image"),
        (
            {
                "content": b'--xx\r\nContent-Disposition: form-data; name="a"\r\n\r\nbroken',
                "headers": {"content-type": "multipart/form-data"},  # no boundary
            },
            400,
            "bad_request",
        ),
    ],
)
def test_each_bad_request_gets_its_code(
    client: TestClient, kwargs: dict[str, object], status: int, code: str
) -> None:
    if kwargs.get("files") == {}:
        # a multipart form with a text field and no file
        kwargs = {"files": {"note": (None, b"no file")}}
    response = client.post("/v1/invoke", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert error_of(response) == code


def test_a_body_over_the_limit_is_refused_while_it_streams(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(50):
            yield b"x" * 10_000  # 500 kB, sent without a content-length

    response = client.post("/v1/invoke", content=chunks())
    assert_refused(response, 413, "payload_too_large")


def test_too_many_pixels_and_too_many_bytes_use_the_worker_limits(
    client: TestClient, tmp_path: Path
) -> None:
    response = client.post("/v1/invoke", content=png(1200, 1000))  # 1.2 MP > 1 MP
    assert_refused(response, 413, "too_many_pixels")
    small = prepare(tmp_path, max_image_bytes=200)
    with TestClient(app_for(small)) as other:
        response = other.post("/v1/invoke", content=REAL[0].read_bytes(), headers=small.auth)
    assert_refused(response, 413, "too_large")


def test_two_images_to_the_single_endpoint_are_refused(client: TestClient) -> None:
    response = client.post(
        "/v1/invoke",
        files=[("a", ("a.jpg", REAL[0].read_bytes())), ("b", ("b.jpg", REAL[1].read_bytes()))],
    )
    assert_refused(response, 413, "too_many_images")


def test_a_batch_over_the_limit_is_refused(client: TestClient) -> None:
    files = [("images", (p.name, p.read_bytes())) for p in REAL[:5]]
    response = client.post("/v1/invoke/batch", files=files)
    assert_refused(response, 413, "too_many_images")
    response = client.post("/v1/invoke/batch", json={"uris": [f"s3://b/{i}" for i in range(5)]})
    assert_refused(response, 413, "too_many_images")


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {"content": REAL[0].read_bytes(), "headers": {"content-type": "image/jpeg"}},
            415,
            "unsupported_media_type",
        ),
        ({"json": {"uris": []}}, 422, "invalid_request"),
        ({"json": {"uri": "s3://a/b"}}, 422, "invalid_request"),
        ({"json": {"uris": ["s3://a/b", "ftp://x/y"]}}, 400, "bad_uri"),
    ],
)
def test_bad_batch_requests_get_their_code(
    client: TestClient, kwargs: dict[str, object], status: int, code: str
) -> None:
    response = client.post("/v1/invoke/batch", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert error_of(response) == code


def test_a_batch_reports_each_images_failure_in_its_result(client: TestClient) -> None:
    files = [
        ("images", ("good.jpg", REAL[0].read_bytes())),
        ("images", ("text.txt", b"not an image")),
        ("images", ("empty.jpg", b"")),
        ("images", ("huge.png", png(1200, 1000))),
    ]
    response = client.post("/v1/invoke/batch", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0]["label"] in ("real", "synthetic")
    assert [r.get("error", {}).get("code") for r in results[1:]] == [
        "unsupported_format",
        "empty_file",
        "too_many_pixels",
    ]


def test_an_unknown_model_and_a_malformed_model_name(client: TestClient) -> None:
    image = REAL[0].read_bytes()
    response = client.post("/v1/invoke?model=nosuchmodel", content=image)
    assert_refused(response, 422, "model_unavailable")
    assert "nosuchmodel" in response.json()["error"]["message"]
    response = client.post("/v1/invoke?model=default@99", content=image)
    assert_refused(response, 422, "model_unavailable")
    response = client.post("/v1/invoke?model=" + "%20bad name", content=image)
    assert_refused(response, 422, "invalid_request")


def test_wrong_methods_and_paths_get_the_error_body_but_still_need_a_key(
    client: TestClient,
) -> None:
    assert_refused(client.get("/v1/invoke"), 405, "method_not_allowed")
    assert_refused(client.post("/v1/nothing-here", content=b"x"), 404, "no_such_endpoint")
    assert_refused(client.get("/v1/invoke", headers={"Authorization": ""}), 401, "unauthenticated")
    assert_refused(client.get("/v1/nothing", headers={"Authorization": ""}), 401, "unauthenticated")


def test_the_error_bodies_name_the_limit_settings(client: TestClient) -> None:
    response = client.post("/v1/invoke", content=b"x" * 200_001)
    assert "SYNTHDETECT_SERVE_MAX_REQUEST_BYTES" in json.dumps(response.json())
