"""The rule for every object address a job names: an ``s3://bucket/key`` with a plain key.

A key is split on ``/`` into segments. The worker refuses, in the contracts and
again wherever it builds or uses a key (``worker.storage.parse_s3_uri``):

- ``.`` and ``..`` segments: S3 keeps them literally, but S3-compatible stores
  backed by a file system (SeaweedFS's filer, MinIO on disk), SDKs and proxies
  normalise them, so ``s3://results/tenant-a/../../other/x`` could land in another
  tenant's space;
- empty segments (``a//b``): the same stores collapse them, so two different keys
  would name one object (a trailing ``/`` is allowed: it ends a prefix);
- control characters (U+0000-U+001F, U+007F): they break logs, CSV manifests and
  HTTP headers, and AWS lists them among the characters to avoid;
- backslashes: some clients and gateways read ``\\`` as a path separator (Windows
  tools, some S3 proxies), which reopens ``..\\..\\`` traversal; AWS lists it among the
  characters to avoid. Our choice, not S3's rule.

Other characters AWS calls "to avoid" (``{ } ^ % ` [ ] " < > ~ # |``, non-ASCII) are
allowed: real image keys use them and none of them changes which object is named.

``S3_URI_PATTERN`` states the same rule for JSON Schema, in the common subset of
Python's and ECMA-262's regex syntax; a unit test feeds both the same addresses.
"""

from __future__ import annotations

import re

S3_SCHEME = "s3://"

_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_SEGMENT = r"(?!\.\.?(?:/|$))[^/]+"
S3_URI_PATTERN = (
    r"^(?![\s\S]*[\x00-\x1f\x7f\\])"  # no control character or backslash anywhere
    rf"s3://{_BUCKET}(/({_SEGMENT}/)*({_SEGMENT})?)?$"
)
"""An ``s3://bucket/key`` address: a lower-case bucket name of 3-63 characters, then a
key of ``/``-separated segments, none of them empty, ``.`` or ``..``, with no control
character or backslash. The key may be empty (a whole bucket) and may end in ``/``."""

_S3_URI = re.compile(S3_URI_PATTERN)
_BUCKET_ONLY = re.compile(rf"s3://{_BUCKET}(/.*)?", re.DOTALL)
_UNSAFE_CHARACTER = re.compile(r"[\x00-\x1f\x7f\\]")


def key_problem(key: str) -> str | None:
    """Why ``key`` may not be read or written, or None when it is a plain key.

    The sentence names the offending segment or character, for dead-letter
    reasons and error rows.
    """
    bad = _UNSAFE_CHARACTER.search(key)
    if bad:
        character = bad.group()
        what = "a backslash" if character == "\\" else f"control character U+{ord(character):04X}"
        return f"{what} in the key is not allowed"
    segments = key.split("/")
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash ends a prefix
    for segment in segments:
        if segment in (".", ".."):
            return f"a {segment!r} segment in the key is not allowed (no relative paths)"
        if segment == "":
            return "an empty segment ('//') in the key is not allowed"
    return None


def check_s3_uri(uri: str) -> str:
    """``uri`` unchanged if it is a safe ``s3://bucket/key`` address, else ``ValueError``."""
    if not _BUCKET_ONLY.fullmatch(uri):
        raise ValueError("must look like s3://bucket/key (lower-case bucket name, 3-63 chars)")
    problem = key_problem(uri[len(S3_SCHEME) :].partition("/")[2])
    if problem:
        raise ValueError(problem)
    if not _S3_URI.fullmatch(uri):  # the schema's rule; key_problem should have said why
        raise ValueError("not a valid s3://bucket/key address")
    return uri
