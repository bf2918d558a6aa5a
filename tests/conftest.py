"""Fixtures shared by every test package.

S3 against a real SeaweedFS (``tests/integration``): ``seaweed`` runs one server
per test session on free loopback ports, ``s3_settings`` points a ``Settings``
and the AWS credential chain at it, ``s3_bucket`` gives each test a fresh bucket.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from scripts.dev_s3 import (
    DEV_ACCESS_KEY_ID,
    DEV_REGION,
    DEV_SECRET_ACCESS_KEY,
    SeaweedPorts,
    SeaweedServer,
)
from worker.logs import configure_logging
from worker.settings import Settings
from worker.storage import S3Store


def pytest_configure(config: pytest.Config) -> None:
    """JSON log lines without local-variable dumps: one traceback per failure, not pages."""
    configure_logging(Settings(log_format="json", log_level="INFO"))


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS S3 server for the whole session (starts in about 3-4 s)."""
    server = SeaweedServer.start(tmp_path_factory.mktemp("seaweed"), SeaweedPorts.free())
    try:
        yield server
    finally:
        server.stop(grace_s=3.0)  # its data is thrown away: no need to wait for a clean exit


@pytest.fixture
def s3_settings(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for the test server; credentials go through the usual AWS environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DEV_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DEV_SECRET_ACCESS_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return Settings(s3_endpoint_url=seaweed.endpoint_url, s3_region=DEV_REGION)


@pytest.fixture
def s3_bucket(s3_settings: Settings) -> Iterator[str]:
    """The name of a new, empty bucket, deleted with its contents after the test."""
    client = S3Store.from_settings(s3_settings).client
    name = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    yield name
    client.delete_bucket(Bucket=name)  # SeaweedFS deletes non-empty buckets by default


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run torch ops on one thread: for tiny test models, thread hand-offs cost more than
    the maths (tens of ms per call when another process keeps the other cores busy)."""
    import torch  # imported here: most tests never need torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
