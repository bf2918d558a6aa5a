"""The SSRF guard and PinnedTransport: the connection goes where the guard looked.

DNS is injected (a resolver that answers differently on each call plays the
rebinding attacker); the real-socket tests run a local HTTP(S) server on
127.0.0.1 under a name that only the injected resolver knows, so a request that
arrives there was connected to the vetted address, not to a DNS answer.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from worker.settings import Settings
from worker.webhooks.delivery import RetryPolicy, deliver_attempt, http_client
from worker.webhooks.ssrf import (
    PINNED_ADDRESSES,
    CallbackRefused,
    PinnedTransport,
    check_callback_url,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
POLICY = RetryPolicy(max_attempts=3, base_s=1, max_s=10)
PUBLIC = "93.184.216.34"


class Rebinding:
    """A resolver that answers ``answers[0]`` first, then ``answers[1]``, ... (and counts)."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return list(self.answers[min(len(self.calls), len(self.answers)) - 1])


def recording_transport() -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    return httpx.MockTransport(handle), seen


def test_a_rebinding_name_is_connected_to_the_vetted_public_address_never_loopback() -> None:
    resolve = Rebinding([PUBLIC], ["127.0.0.1"])
    inner, seen = recording_transport()
    client = httpx.Client(transport=PinnedTransport([], resolve, inner=inner))
    record = deliver_attempt(
        client, "https://hooks.example.com/h", "job-1", b"{}", SECRET, 1, POLICY, [], resolve
    )
    assert record.outcome == "delivered"
    assert resolve.calls == ["hooks.example.com"]  # one DNS answer, checked and used
    [request] = seen
    assert request.url.host == PUBLIC
    assert request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"  # TLS checks the name


def test_without_a_pin_the_transport_vets_and_pins_by_itself() -> None:
    resolve = Rebinding([PUBLIC], ["127.0.0.1"])
    inner, seen = recording_transport()
    with httpx.Client(transport=PinnedTransport([], resolve, inner=inner)) as client:
        assert client.post("http://hooks.example.com:8080/x").status_code == 204
        # The second request resolves again and gets loopback: refused, nothing sent.
        with pytest.raises(CallbackRefused, match=r"127\.0\.0\.1"):
            client.post("http://hooks.example.com:8080/x")
    [request] = seen
    assert str(request.url) == f"http://{PUBLIC}:8080/x"
    assert request.headers["host"] == "hooks.example.com:8080"


def test_public_first_and_loopback_second_in_one_answer_is_refused() -> None:
    resolve = Rebinding([PUBLIC, "127.0.0.1"])
    inner, seen = recording_transport()
    client = httpx.Client(transport=PinnedTransport([], resolve, inner=inner))
    record = deliver_attempt(
        client, "https://hooks.example.com/h", "job-1", b"{}", SECRET, 1, POLICY, [], resolve
    )
    assert record.outcome == "refused"
    assert "127.0.0.1" in (record.error or "")
    assert seen == []
    with pytest.raises(CallbackRefused):
        client.post("https://hooks.example.com/h")
    assert seen == []


def test_the_next_vetted_address_is_tried_when_connecting_fails() -> None:
    tried: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        tried.append(request.url.host)
        if request.url.host == "2001:db8::1":
            raise httpx.ConnectError("unreachable", request=request)
        return httpx.Response(200)

    transport = PinnedTransport(["2001:db8::/32"], inner=httpx.MockTransport(handle))
    request = httpx.Request(
        "POST",
        "https://hooks.example.com/h",
        extensions={PINNED_ADDRESSES: ["2001:db8::1", PUBLIC]},
    )
    assert transport.handle_request(request).status_code == 200
    assert tried == ["2001:db8::1", PUBLIC]


def test_a_name_allow_listed_by_name_is_connected_by_name() -> None:
    inner, seen = recording_transport()
    transport = PinnedTransport(["hooks.internal"], inner=inner)
    transport.handle_request(httpx.Request("POST", "http://hooks.internal/x"))
    assert seen[0].url.host == "hooks.internal"
    assert check_callback_url("http://HOOKS.internal/x", ["hooks.internal"]) == []


# --- real sockets: HTTP and TLS -------------------------------------------------------------


@contextmanager
def local_server(tls: ssl.SSLContext | None = None) -> Iterator[tuple[int, list[str]]]:
    """A server on 127.0.0.1 that answers 204 and records each request's Host header."""
    hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            hosts.append(self.headers.get("host", ""))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hosts
    finally:
        server.shutdown()
        server.server_close()


def certificate(name: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` (its own CA): (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def loopback_as(name: str):  # type: ignore[no-untyped-def]
    """A resolver under which only ``name`` exists, at 127.0.0.1."""

    def resolve(host: str, port: int) -> list[str]:
        if host != name:
            raise OSError(f"cannot resolve {host}")
        return ["127.0.0.1"]

    return resolve


def test_the_real_client_connects_to_the_pinned_address_with_the_name_in_host() -> None:
    resolve = loopback_as("hooks.test")
    settings = Settings(callback_allowlist=["127.0.0.0/8"])
    with local_server() as (port, hosts), http_client(settings, resolve) as client:
        record = deliver_attempt(
            client, f"http://hooks.test:{port}/h", "j", b"{}", SECRET, 1, POLICY,
            settings.callback_allowlist, resolve,
        )  # fmt: skip
    assert record.outcome == "delivered", record.error
    assert hosts == [f"hooks.test:{port}"]  # "hooks.test" exists in no DNS: the pin connected


def test_tls_is_verified_against_the_host_name_not_the_pinned_address(tmp_path: Path) -> None:
    cert, key = certificate("hooks.test", tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    trusted = ssl.create_default_context(cafile=str(cert))
    resolve = loopback_as("hooks.test")
    with local_server(server_tls) as (port, hosts):
        inner = httpx.HTTPTransport(verify=trusted)
        with httpx.Client(transport=PinnedTransport(["127.0.0.0/8"], resolve, inner)) as client:
            assert client.post(f"https://hooks.test:{port}/h").status_code == 204
        # A certificate for another name fails verification although the address is the same.
        other, _ = certificate("other.test", tmp_path)
        wrong = httpx.HTTPTransport(verify=ssl.create_default_context(cafile=str(other)))
        pinned = PinnedTransport(["127.0.0.0/8"], resolve, wrong)
        with httpx.Client(transport=pinned) as client, pytest.raises(httpx.ConnectError):
            client.post(f"https://hooks.test:{port}/h")
    assert hosts == [f"hooks.test:{port}"]


def test_a_pinned_ipv6_address_is_written_as_a_url_host() -> None:
    inner, seen = recording_transport()
    request = httpx.Request(
        "POST", "https://hooks.example.com/x", extensions={PINNED_ADDRESSES: ["2606:2800::1"]}
    )
    PinnedTransport([], inner=inner).handle_request(request)
    assert seen[0].url.host == "2606:2800::1"
    assert str(seen[0].url) == "https://[2606:2800::1]/x"
    assert ipaddress.ip_address(seen[0].url.host).version == 6
