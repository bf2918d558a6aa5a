"""contracts.keys: one rule for object keys, stated as code and as the schema's regex."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from contracts import ClassifyJob
from contracts.keys import S3_URI_PATTERN, check_s3_uri, key_problem

SAFE = [
    "s3://abc",
    "s3://abc/",
    "s3://abc/a.jpg",
    "s3://abc/2026/11/a.jpg",
    "s3://abc/prefix/",
    "s3://abc/...",
    "s3://abc/.hidden/x..y/z.",
    "s3://abc/é and spaces #1 {x}.png",
]
UNSAFE = {
    "s3://results/tenant-a/../../other/x": "'..' segment",
    "s3://abc/..": "'..' segment",
    "s3://abc/../": "'..' segment",
    "s3://abc/./x": "'.' segment",
    "s3://abc/x/.": "'.' segment",
    "s3://abc//x": "empty segment",
    "s3://abc/a//b": "empty segment",
    "s3://abc/a//": "empty segment",
    "s3://abc/a\nb": "control character U+000A",
    "s3://abc/a\n": "control character U+000A",
    "s3://abc/a\x00": "control character U+0000",
    "s3://abc/a\x7f": "control character U+007F",
    "s3://abc/a\\..\\b": "backslash",
}


@pytest.mark.parametrize("uri", SAFE)
def test_plain_keys_pass_the_code_and_the_schema_pattern(uri: str) -> None:
    assert check_s3_uri(uri) == uri
    assert re.search(S3_URI_PATTERN, uri)


@pytest.mark.parametrize(("uri", "why"), UNSAFE.items(), ids=list(UNSAFE))
def test_unsafe_keys_fail_the_code_and_the_schema_pattern_with_a_reason(uri: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        check_s3_uri(uri)
    # re.search, as jsonschema applies "pattern" (Python's $ also matches before a final \n)
    assert not re.search(S3_URI_PATTERN, uri)


def test_key_problem_names_nothing_for_a_plain_key() -> None:
    assert key_problem("a/b/c.jpg") is None
    assert key_problem("") is None


def test_the_issue_example_is_refused_with_a_message_naming_the_field() -> None:
    document = {
        "job_id": "j1",
        "inputs": {"kind": "uris", "uris": ["s3://images/a.jpg"]},
        "output": {"uri": "s3://results/tenant-a/../../other/x"},
    }
    with pytest.raises(ValidationError) as caught:
        ClassifyJob.from_json_value(document)
    [error] = caught.value.errors()
    assert error["loc"] == ("output", "uri")
    assert "'..' segment in the key is not allowed" in error["msg"]
