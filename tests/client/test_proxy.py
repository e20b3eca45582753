"""Requests through a real HTTP CONNECT proxy on loopback: ``proxy=``, the proxy environment
variables, and ``NO_PROXY``.

The proxy records every CONNECT it tunnels, so each test proves where the bytes went; the
emulator's own handshake counter proves they arrived.
"""

from __future__ import annotations

import select
import socket
import socketserver
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import oaiws
from oaiws.testing import Emulator

PROXY_ENV = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY")


class _TunnelHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        proxy: ConnectProxy = self.server  # type: ignore[assignment]
        request_line = self.rfile.readline().decode("latin-1").strip()
        headers = []
        while True:
            line = self.rfile.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            headers.append(line.decode("latin-1").strip())
        method, target, _ = request_line.split(" ", 2)
        with proxy.lock:
            proxy.tunnels.append((method, target, headers))
        if method != "CONNECT":
            self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)), timeout=5)
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        _pipe(self.connection, upstream)


def _pipe(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    with upstream:
        sockets = [client, upstream]
        while True:
            readable, _, _ = select.select(sockets, [], [], 10)
            if not readable:
                return
            for sock in readable:
                other = upstream if sock is client else client
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                try:
                    other.sendall(data)
                except OSError:
                    return


class ConnectProxy(socketserver.ThreadingTCPServer):
    """A minimal HTTP CONNECT proxy that records the tunnels it opened."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TunnelHandler)
        self.lock = threading.Lock()
        self.tunnels: list[tuple[str, str, list[str]]] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def targets(self) -> list[str]:
        with self.lock:
            return [target for _, target, _ in self.tunnels]


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    server = ConnectProxy()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(autouse=True)
def _no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)


def _host_port(emulator: Emulator) -> str:
    # "http://127.0.0.1:PORT/v1" -> "127.0.0.1:PORT"
    return emulator.base_url.split("://", 1)[1].split("/", 1)[0]


def _ask(client: oaiws.Client) -> oaiws.Response:
    return client.create_response(model="test-model", input="through the proxy")


def test_the_proxy_option_tunnels_the_websocket(
    oaiws_emulator: Emulator, proxy: ConnectProxy, client_for: Any
) -> None:
    client = client_for(oaiws_emulator, proxy=proxy.url, max_retries=0)
    assert _ask(client).status == "completed"
    assert _ask(client).status == "completed"
    assert proxy.targets() == [_host_port(oaiws_emulator)], "one tunnel, reused by the pool"
    method, _, headers = proxy.tunnels[0]
    assert method == "CONNECT"
    assert not any(h.lower().startswith("authorization") for h in headers), (
        "the API key travels inside the tunnel, never to the proxy"
    )
    assert oaiws_emulator.stats()["handshakes"] == 1


def test_the_http_proxy_variable_is_honoured_for_ws_urls(
    oaiws_emulator: Emulator,
    proxy: ConnectProxy,
    client_for: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    client = client_for(oaiws_emulator, max_retries=0)
    assert _ask(client).status == "completed"
    assert proxy.targets() == [_host_port(oaiws_emulator)]


def test_the_https_proxy_variable_is_honoured_for_wss_urls(
    oaiws_emulator_factory: Any,
    proxy: ConnectProxy,
    client_for: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator = oaiws_emulator_factory(tls=True)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    client = client_for(emulator, verify=emulator.ca_path, max_retries=0)
    assert _ask(client).status == "completed"
    assert proxy.targets() == [_host_port(emulator)], "TLS runs inside the CONNECT tunnel"


def test_no_proxy_bypasses_the_environment_proxy(
    oaiws_emulator: Emulator,
    proxy: ConnectProxy,
    client_for: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.invalid,127.0.0.1")
    client = client_for(oaiws_emulator, max_retries=0)
    assert _ask(client).status == "completed"
    assert proxy.targets() == [], "NO_PROXY names the host: no tunnel"
    assert oaiws_emulator.stats()["handshakes"] == 1


def test_a_dead_proxy_is_a_connection_error_not_a_direct_connection(
    oaiws_emulator: Emulator, client_for: Any
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    client = client_for(oaiws_emulator, proxy=f"http://127.0.0.1:{port}", max_retries=0)
    with pytest.raises(oaiws.APIConnectionError):
        _ask(client)
    assert oaiws_emulator.stats()["handshakes"] == 0, "never fell back to a direct connection"


def test_no_proxy_bypasses_the_proxy_option_too(
    oaiws_emulator: Emulator,
    proxy: ConnectProxy,
    client_for: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.0/8")
    client = client_for(oaiws_emulator, proxy=proxy.url, max_retries=0)
    assert _ask(client).status == "completed"
    assert proxy.targets() == [], "a CIDR range in NO_PROXY names the host: no tunnel"


def test_http_transport_goes_through_the_proxy_too(
    oaiws_emulator_factory: Any, proxy: ConnectProxy, client_for: Any
) -> None:
    emulator = oaiws_emulator_factory(tls=True)
    client = client_for(
        emulator, transport="http", proxy=proxy.url, verify=emulator.ca_path, max_retries=0
    )
    assert _ask(client).status == "completed"
    assert client.responses.retrieve(_ask(client).id).status == "completed"  # type: ignore[union-attr]
    targets = proxy.targets()
    assert targets and set(targets) == {_host_port(emulator)}, "every request was tunnelled"
    assert all(method == "CONNECT" for method, _, _ in proxy.tunnels)
    assert not any(
        h.lower().startswith("authorization") for _, _, headers in proxy.tunnels for h in headers
    ), "the API key travels inside the tunnel"
    assert emulator.stats()["handshakes"] == 0


class _Refusing(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        proxy: RefusingProxy = self.server  # type: ignore[assignment]
        request_line = self.rfile.readline().decode("latin-1").strip()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        with proxy.lock:
            proxy.seen.append(request_line.split(" ", 1)[0])
        self.wfile.write(f"HTTP/1.1 {proxy.status} Refused\r\nContent-Length: 0\r\n\r\n".encode())


class RefusingProxy(socketserver.ThreadingTCPServer):
    """Answers every request (a CONNECT or a forwarded one) with one status."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, status: int) -> None:
        super().__init__(("127.0.0.1", 0), _Refusing)
        self.status = status
        self.lock = threading.Lock()
        self.seen: list[str] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


@pytest.mark.parametrize(("status", "falls_back"), [(407, False), (403, True)])
def test_a_proxy_refusing_the_upgrade_falls_back_to_http_unless_it_wants_credentials(
    oaiws_emulator: Emulator, client_for: Any, status: int, falls_back: bool
) -> None:
    refusing = RefusingProxy(status)
    threading.Thread(target=refusing.serve_forever, args=(0.05,), daemon=True).start()
    try:
        client = client_for(oaiws_emulator, proxy=refusing.url, max_retries=0)
        with pytest.raises(oaiws.APIError):
            _ask(client)
        assert client.pool_stats()["http_fallbacks"] == int(falls_back)
        # Falling back, the plain-HTTP request went to the proxy too (no tunnel), which
        # refused it as well; with 407 nothing was tried but the tunnel.
        assert refusing.seen == (["CONNECT", "POST"] if falls_back else ["CONNECT"])
    finally:
        refusing.shutdown()
        refusing.server_close()
