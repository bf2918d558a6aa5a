"""Which keys obstore may serve: everything else must go through boto3 unchanged."""

from __future__ import annotations

import pytest

from worker.objectreader import addressable


@pytest.mark.parametrize(
    "key", ["a.jpg", "a b (1).jpg", "x#y.jpg", "ü/é.jpg", "p%20q.jpg", "g+h?.jpg", "n\\o.jpg"]
)
def test_plain_keys_are_addressable(key: str) -> None:
    assert addressable(key)


@pytest.mark.parametrize(
    "key", ["", "folder/", "/lead.jpg", "a//b.jpg", "./c.jpg", "d/../e.jpg", "tab\t.jpg", "x\x7f"]
)
def test_keys_obstore_would_rewrite_or_refuse_are_not(key: str) -> None:
    assert not addressable(key)
