"""The published OpenAPI document is accurate (real answers validate against it) and
``docs/api.md`` is generated from the current one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from starlette.testclient import TestClient

from tests.support.serving import Served, app_for, prepare
from worker.serve import apidoc
from worker.serve.invoke import API_ERROR_STATUS, IMAGE_ERROR_STATUS, ApiErrorCode
from worker.serve.openapi import error_codes, openapi_schema

SAMPLE = Path(__file__).parents[2] / "data" / "cifake-sample"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return prepare(tmp_path_factory.mktemp("serve"), serve_max_batch_images=2)


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    with TestClient(app_for(served)) as client:
        yield client


def validator(component: str) -> Draft202012Validator:
    """A validator of ``component`` with the document's other schemas resolvable."""
    document = openapi_schema()
    root = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    return Draft202012Validator(root)


def response_schema(path: str, status: int) -> str:
    operation = openapi_schema()["paths"][path]["post"]
    ref = operation["responses"][str(status)]["content"]["application/json"]["schema"]["$ref"]
    return str(ref).rsplit("/", 1)[-1]


def test_docs_api_md_is_generated_from_the_current_schema() -> None:
    assert apidoc.DOC.read_text() == apidoc.render(openapi_schema()), (
        "docs/api.md is out of date: run `.venv/bin/python -m worker.serve.apidoc`"
    )


def test_the_schema_is_published_without_a_key(client: TestClient) -> None:
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    assert response.json() == openapi_schema()


def test_every_component_is_a_valid_json_schema() -> None:
    for schema in openapi_schema()["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)  # raises SchemaError naming the fault


def test_every_error_code_has_a_status_and_a_meaning() -> None:
    rows = error_codes()
    assert {code for code, _, _ in rows} == {c.value for c in ApiErrorCode} | {
        c.value for c in IMAGE_ERROR_STATUS
    }
    assert all(meaning for _, _, meaning in rows)
    assert set(API_ERROR_STATUS) == set(ApiErrorCode)


def answers(client: TestClient, served: Served) -> list[tuple[str, Any]]:
    """(path, response) for a spread of real requests: answers and refusals."""
    image = next((SAMPLE / "real").glob("*.jpg")).read_bytes()
    key = served.auth
    return [
        ("/v1/invoke", client.post("/v1/invoke", content=image, headers=key)),
        ("/v1/invoke", client.post("/v1/invoke", content=b"nope", headers=key)),
        ("/v1/invoke", client.post("/v1/invoke", content=image)),
        ("/v1/invoke", client.post("/v1/invoke", json={"uri": "ftp://x/y"}, headers=key)),
        ("/v1/invoke", client.post("/v1/invoke?model=gone", content=image, headers=key)),
        (
            "/v1/invoke/batch",
            client.post(
                "/v1/invoke/batch",
                files=[("images", ("a.jpg", image)), ("images", ("b.txt", b"text"))],
                headers=key,
            ),
        ),
        (
            "/v1/invoke/batch",
            client.post("/v1/invoke/batch", json={"uris": ["s3://a/1"] * 3}, headers=key),
        ),
    ]


def test_real_answers_validate_against_the_documented_responses(
    client: TestClient, served: Served
) -> None:
    seen = set()
    for path, response in answers(client, served):
        component = response_schema(path, response.status_code)
        errors = list(validator(component).iter_errors(response.json()))
        assert not errors, f"{path} {response.status_code}: {errors[0].message}"
        seen.add((path, response.status_code))
    assert ("/v1/invoke", 200) in seen
    assert ("/v1/invoke/batch", 200) in seen
    assert len(seen) >= 6


def test_a_wrong_answer_would_fail_validation() -> None:
    errors = list(validator("ImageResult").iter_errors({"uri": "x", "label": 3}))
    assert errors
