"""The deadline transport (``providers/deadlines.py``) as an httpx transport: its socket
deadlines are in force, it follows the proxy environment like any httpx client, and it
verifies TLS against a configured CA bundle. Real sockets, the official SDK, the fake
provider (which also answers requests sent to it as a proxy: absolute-URI targets)."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import openai
import pytest

from flexitasks.config import ProviderSettings
from flexitasks.errors import ConfigError
from flexitasks.fake_provider import FakeProvider
from flexitasks.providers.deadlines import WatchedTransport, deadlines_active

UNREACHABLE = "http://provider.invalid/v1"  # .invalid never resolves: only a proxy can reach it


def ask(transport: WatchedTransport, base_url: str) -> str:
    client = openai.OpenAI(api_key="k", base_url=base_url, max_retries=0, timeout=5,
                           http_client=openai.DefaultHttpxClient(transport=transport))
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
    return answer.choices[0].message.content or ""


@pytest.fixture()
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(name="via-proxy") as fp:
        yield fp


def test_socket_deadlines_are_active():
    assert deadlines_active()


def test_the_self_test_notices_a_transport_without_deadlines():
    assert not deadlines_active(httpx2.HTTPTransport(trust_env=False), backstop=1.0)


def test_requests_go_through_the_proxy_the_environment_names(fake, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", fake.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    with WatchedTransport() as transport:
        assert transport.proxy_for(httpx2.URL(UNREACHABLE)) == fake.url
        assert ask(transport, UNREACHABLE).startswith("via-proxy:")
    assert fake.admin.requests()[-1]["path"] == "/v1/chat/completions"


def test_no_proxy_hosts_are_reached_directly(fake, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", fake.url)
    monkeypatch.setenv("NO_PROXY", "localhost,.invalid")
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with WatchedTransport() as transport:
        assert transport.proxy_for(httpx2.URL(UNREACHABLE)) is None
        with pytest.raises(openai.APIConnectionError):
            ask(transport, UNREACHABLE)
    assert fake.admin.stats()["requests"] == 0


def test_without_trust_env_the_proxy_environment_is_ignored(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with WatchedTransport(trust_env=False) as transport:
        assert transport.proxy_for(httpx2.URL("https://api.openai.com/v1")) is None


@pytest.fixture()
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate; yields (url, cert file)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/", cert
    finally:
        server.shutdown()
        server.server_close()


def test_a_configured_ca_bundle_verifies_the_provider(tls_server):
    url, cert = tls_server
    with WatchedTransport(str(cert), trust_env=False) as transport, httpx2.Client(transport=transport) as client:
        assert client.get(url).text == "ok"


def test_without_the_ca_bundle_a_private_certificate_is_refused(tls_server):
    url, _ = tls_server
    with (
        WatchedTransport(trust_env=False) as transport,
        httpx2.Client(transport=transport) as client,
        pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get(url)


def test_a_missing_ca_bundle_is_a_config_error(tmp_path):
    from flexitasks.config import parse_settings

    with pytest.raises(ConfigError, match=r"ca_bundle.*no such file"):
        parse_settings({"providers": [{"name": "p", "kind": "openai", "model": "m",
                                       "ca_bundle": str(tmp_path / "nope.pem")}]}, "test.toml")
    assert ProviderSettings(name="p", kind="openai", model="m", ca_bundle=str(tmp_path)).ca_bundle == str(tmp_path)


def test_one_transport_serves_hundreds_of_calls_at_once_and_keeps_their_connections(fake):
    """A threads-pool worker has one transport per provider and up to ``--concurrency``
    calls in flight, each thread its own pool: none waits for a pool slot (httpx allows
    100), and every thread's connection is kept for its next call (httpx keeps 20)."""
    n = 150
    fake.admin.set_fault(latency=3.0)  # every call still open when the last one is sent
    start = threading.Barrier(n)
    answers: list[str] = []
    with WatchedTransport() as transport, ThreadPoolExecutor(n) as threads:  # as Celery's threads pool

        def call() -> tuple[int, int]:
            start.wait()
            answers.append(ask(transport, fake.url + "/v1"))
            return threading.get_ident(), sum(len(pool.connections) for pool in transport.pools().values())

        first = list(threads.map(lambda _: call(), range(n)))
        assert len(answers) == n
        assert fake.admin.stats()["max_in_flight"] == n
        assert {held for _, held in first} == {1}  # each thread keeps its one connection, idle
        fake.admin.set_fault(latency=0.5)
        second = list(threads.map(lambda _: call(), range(n)))
        assert {ident for ident, _ in second} == {ident for ident, _ in first}
        assert {held for _, held in second} == {1}  # the same connection again, not a second one
        assert sum(len(pool.connections) for pool in transport._open) == n
