"""Shared helpers of the client tests: clients bound to an emulator, condition waits."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from support import Answer, RawServer

import oaiws
from oaiws import _retry


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # The policy's pauses, not its decisions, are shortened: every rule still runs.
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 0.01)
    monkeypatch.setattr(_retry, "MAX_BACKOFF", 0.05)


ClientFactory = Callable[..., oaiws.Client]


@pytest.fixture
def client_for() -> Iterator[ClientFactory]:
    """``client_for(emulator, **options)``: a Client on that emulator, closed at teardown."""
    clients: list[oaiws.Client] = []

    def make(emulator: Any, **options: Any) -> oaiws.Client:
        options.setdefault("api_key", emulator.api_key)
        options.setdefault("base_url", emulator.base_url)
        client = oaiws.Client(**options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Answer], RawServer]]:
    """``raw_server(answer)``: a started ``RawServer`` (see support.py), ended at teardown."""
    servers: list[RawServer] = []

    def make(answer: Answer) -> RawServer:
        server = RawServer(answer).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.end()


@pytest.fixture
def scripted_server() -> Iterator[Callable[[type[socketserver.BaseRequestHandler]], str]]:
    """``scripted_server(Handler)``: a loopback server whose every connection ``Handler``
    scripts byte for byte (a server that lies, or knows less than the emulator); returns its
    base URL. Shut down at teardown."""
    servers: list[socketserver.ThreadingTCPServer] = []

    def start(handler: type[socketserver.BaseRequestHandler]) -> str:
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
