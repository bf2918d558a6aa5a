"""``synthdetect serve`` as an operator runs it: a real process, users and keys from the CLI,
images over HTTP, from SeaweedFS and from an HTTP server, 48 concurrent clients sharing
batches, a ``production`` promotion followed without a restart, and SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from contracts import ModelCard, ModelId
from scripts.dev_s3 import DEV_ACCESS_KEY_ID, DEV_REGION, DEV_SECRET_ACCESS_KEY
from scripts.serve_process import ServeProcess, serve_environment, synthdetect
from tests.support.waiting import wait_until
from worker.inference.registry import AliasRecord, ModelRegistry
from worker.settings import BUNDLED_MODELS, Settings
from worker.storage import Storage

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

SAMPLE = Path(__file__).parents[1] / "data" / "cifake-sample"
IMAGES = sorted(SAMPLE.glob("*/*.jpg"))
CLIENTS = 48


class ImageServer:
    """Serves ``/img.jpg``, a redirect, a 404 and an over-large body on a loopback port."""

    def __init__(self, image: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/img.jpg":
                    self._answer(200, image)
                elif self.path == "/moved":
                    self.send_response(302)
                    self.send_header("location", "/img.jpg")
                    self.send_header("content-length", "0")
                    self.end_headers()
                elif self.path == "/big":
                    self._answer(200, b"\xff" * 3_000_000)
                else:
                    self._answer(404, b"no")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder registry: the bundled default as v1 (production) and a hotter copy as v2."""
    root = tmp_path_factory.mktemp("registry")
    storage = Storage.from_settings(Settings())
    bundled = ModelRegistry(storage, [str(BUNDLED_MODELS)])
    registry = ModelRegistry(storage, [str(root)])
    card, data = bundled.read_model(ModelId(name="default", version="1"))
    registry.publish(card, data)
    hotter = card.calibration.model_copy(update={"temperature": card.calibration.temperature * 4})
    registry.publish(
        ModelCard.model_validate(
            card.model_copy(
                update={"version": "2", "calibration": hotter, "created_at": datetime.now(UTC)}
            ).model_dump()
        ),
        data,
    )
    registry.write_alias("default", AliasRecord(version="1"))
    return root


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, registry_root: Path, e2e_s3: Settings
) -> dict[str, str]:
    environment = serve_environment(
        tmp_path_factory.mktemp("serve-data"),
        model_registry=str(registry_root),
        alias_poll_s="0.3",
        device="cpu",
        s3_endpoint_url=e2e_s3.s3_endpoint_url or "",
        serve_uri_allowlist='["127.0.0.1"]',
        max_image_bytes="2000000",
        serve_max_batch_images="8",
    )
    environment.update(
        AWS_ACCESS_KEY_ID=DEV_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=DEV_SECRET_ACCESS_KEY,
        AWS_DEFAULT_REGION=DEV_REGION,
    )
    return environment


@pytest.fixture(scope="module")
def api_key(env: dict[str, str]) -> str:
    synthdetect("users", "add", "ann", "--password-stdin", env=env, stdin="correct horse\n")
    return synthdetect("apikeys", "create", "e2e", env=env).strip()


@pytest.fixture(scope="module")
def serve(
    env: dict[str, str], api_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    process = ServeProcess.start(env, tmp_path_factory.mktemp("serve-log") / "serve.log")
    yield process
    process.stop()


@pytest.fixture
def http(serve: ServeProcess, api_key: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=serve.url, headers=headers, timeout=60) as client:
        yield client


def test_the_cli_lists_what_it_created(env: dict[str, str], api_key: str) -> None:
    assert "ann" in synthdetect("users", "list", env=env)
    key_id = api_key.split("_")[1]
    assert key_id in synthdetect("apikeys", "list", env=env)
    assert api_key.split("_", 2)[2] not in synthdetect("apikeys", "list", env=env)
    with pytest.raises(RuntimeError, match="already exists"):
        synthdetect("users", "add", "ann", "--password-stdin", env=env, stdin="another one\n")
    with pytest.raises(RuntimeError, match="8 characters"):
        synthdetect("users", "add", "bob", "--password-stdin", env=env, stdin="short\n")


def test_raw_and_multipart_over_real_http(http: httpx.Client) -> None:
    image = IMAGES[0].read_bytes()
    raw = http.post("/v1/invoke", content=image, headers={"content-type": "image/jpeg"})
    form = http.post("/v1/invoke", files={"image": ("a.jpg", image)})
    assert raw.status_code == 200
    assert form.status_code == 200
    assert raw.json()["scores"] == form.json()["scores"]
    assert raw.json()["model"] == {"name": "default", "version": "1"}


def test_an_s3_uri_from_seaweedfs(
    http: httpx.Client, s3_settings: Settings, s3_bucket: str
) -> None:
    image = IMAGES[1].read_bytes()
    Storage.from_settings(s3_settings).put_bytes(f"s3://{s3_bucket}/in/x.jpg", image)
    by_uri = http.post("/v1/invoke", json={"uri": f"s3://{s3_bucket}/in/x.jpg"})
    by_bytes = http.post("/v1/invoke", content=image)
    assert by_uri.status_code == 200, by_uri.text
    assert by_uri.json()["uri"] == f"s3://{s3_bucket}/in/x.jpg"
    assert by_uri.json()["scores"] == by_bytes.json()["scores"]
    missing = http.post("/v1/invoke", json={"uri": f"s3://{s3_bucket}/in/none.jpg"})
    assert missing.status_code == 422
    assert missing.json()["error"]["code"] == "not_found"
    batch = http.post(
        "/v1/invoke/batch",
        json={"uris": [f"s3://{s3_bucket}/in/x.jpg", f"s3://{s3_bucket}/in/none.jpg"]},
    )
    assert [r.get("error", {}).get("code") for r in batch.json()["results"]] == [None, "not_found"]


def test_http_uris_through_the_ssrf_guard(http: httpx.Client) -> None:
    server = ImageServer(IMAGES[2].read_bytes())
    try:
        ok = http.post("/v1/invoke", json={"uri": f"{server.url}/img.jpg"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["label"] in ("real", "synthetic")
        for path, status, code in [
            ("/moved", 502, "fetch_failed"),
            ("/gone", 422, "not_found"),
            ("/big", 413, "too_large"),
        ]:
            response = http.post("/v1/invoke", json={"uri": f"{server.url}{path}"})
            assert (response.status_code, response.json()["error"]["code"]) == (status, code)
        refused = http.post("/v1/invoke", json={"uri": "http://10.1.2.3/x.jpg"})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "uri_refused"
    finally:
        server.close()


def batch_counts(client: httpx.Client) -> tuple[float, float]:
    text = client.get("/metrics").text
    total = float(re.search(r"^synthdetect_batch_size_sum (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    count = float(re.search(r"^synthdetect_batch_size_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return total, count


def test_concurrent_clients_share_batches_and_get_the_same_answers(http: httpx.Client) -> None:
    single = {p.name: http.post("/v1/invoke", content=p.read_bytes()).json() for p in IMAGES[:8]}
    before = batch_counts(http)
    paths = [IMAGES[i % 8] for i in range(CLIENTS * 4)]

    def call(path: Path) -> tuple[str, dict[str, object]]:
        response = http.post("/v1/invoke", content=path.read_bytes())
        assert response.status_code == 200, response.text
        return path.name, response.json()

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(call, paths))
    after = batch_counts(http)
    images, batches = after[0] - before[0], after[1] - before[1]
    assert images == len(paths)
    assert batches < images, "concurrent requests never shared a batch"
    for name, body in answers:
        assert body["label"] == single[name]["label"]
        assert body["scores"] == pytest.approx(single[name]["scores"], abs=1e-4)


def test_a_promotion_reaches_the_api_without_a_restart(
    http: httpx.Client, registry_root: Path
) -> None:
    registry = ModelRegistry(Storage.from_settings(Settings()), [str(registry_root)])
    image = IMAGES[3].read_bytes()
    assert http.post("/v1/invoke", content=image).json()["model"]["version"] == "1"
    registry.promote(ModelId(name="default", version="2"))
    try:
        wait_until(
            lambda: http.post("/v1/invoke", content=image).json()["model"]["version"] == "2",
            30,
            "the API serves v2 after the promotion",
        )
        pinned = http.post("/v1/invoke?model=default@1", content=image).json()
        assert pinned["model"]["version"] == "1"
    finally:
        registry.rollback("default")
    wait_until(
        lambda: http.post("/v1/invoke", content=image).json()["model"]["version"] == "1",
        30,
        "the API serves v1 again after the rollback",
    )


def test_a_key_revoked_with_the_cli_is_refused_at_once(
    serve: ServeProcess, env: dict[str, str]
) -> None:
    key = synthdetect("apikeys", "create", "temp", env=env).strip()
    headers = {"Authorization": f"Bearer {key}"}
    image = IMAGES[0].read_bytes()
    assert httpx.post(f"{serve.url}/v1/invoke", content=image, headers=headers).status_code == 200
    synthdetect("apikeys", "revoke", key.split("_")[1], env=env)
    response = httpx.post(f"{serve.url}/v1/invoke", content=image, headers=headers)
    assert response.status_code == 401


def test_the_console_asks_for_a_login(serve: ServeProcess) -> None:
    response = httpx.get(f"{serve.url}/", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")
    assert "csrf_token" in httpx.get(f"{serve.url}/login").text


def test_sigterm_stops_it_cleanly(env: dict[str, str], api_key: str, tmp_path: Path) -> None:
    process = ServeProcess.start(env, tmp_path / "serve.log")
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says why.
    assert process.stop() in (0, -signal.SIGTERM)
    events = [
        json.loads(line)["event"]
        for line in process.log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    assert events.index("serve_ready") < events.index("serve_stopped")
