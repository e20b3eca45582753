"""Helpers shared by the emulator's tests: a thin websocket-client wrapper (waiting on a
condition with a deadline is ``waiting.wait_for``, shared by every test folder)."""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest
import websocket

from oaiws.testing import Emulator

# The events of a plain text response with the default 8 deltas, in order.
TEXT_TURN = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 8,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]

TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}
KEY = "sk-test"

# Why the tests that drive the emulator with the official SDK are skipped where it is absent.
OPENAI_MISSING = (
    "the official openai SDK with WebSocket mode is not installed: it needs Python 3.10+ "
    "(openai>=3.22), and the test extra installs it there"
)


class Client:
    """One raw WebSocket to the emulator, with the few reads the tests need."""

    def __init__(
        self,
        url: str,
        *,
        key: Optional[str] = KEY,
        header: Optional[list[str]] = None,
        sslopt: Optional[dict[str, Any]] = None,
        timeout: float = 5.0,
    ) -> None:
        headers = list(header or [])
        if key is not None and header is None:
            headers.append(f"Authorization: Bearer {key}")
        self.ws = websocket.create_connection(url, header=headers, timeout=timeout, sslopt=sslopt)

    def send(self, payload: Any) -> None:
        self.ws.send(payload if isinstance(payload, str) else json.dumps(payload))

    def create(self, **fields: Any) -> None:
        fields.setdefault("model", "gpt-test")
        self.send({"type": "response.create", **fields})

    def event(self) -> dict[str, Any]:
        data = self.ws.recv()
        assert isinstance(data, str), f"expected a text frame, got {data!r}"
        event: dict[str, Any] = json.loads(data)
        return event

    def until_terminal(self) -> list[dict[str, Any]]:
        events = []
        while True:
            event = self.event()
            events.append(event)
            if event["type"] in TERMINAL:
                return events

    def run(self, **fields: Any) -> list[dict[str, Any]]:
        self.create(**fields)
        return self.until_terminal()

    def close_code(self) -> Optional[int]:
        """Read frames until the server's close frame; its code (None: TCP dropped)."""
        try:
            while True:
                opcode, data = self.ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return int(struct.unpack("!H", data[:2])[0]) if len(data) >= 2 else 1005
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            return None

    def close(self) -> None:
        self.ws.close(timeout=1)


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


def final(events: list[dict[str, Any]]) -> dict[str, Any]:
    response: dict[str, Any] = events[-1]["response"]
    return response


@pytest.fixture
def emu(oaiws_emulator_factory: Callable[..., Emulator]) -> Emulator:
    return oaiws_emulator_factory()


@pytest.fixture
def connect(emu: Emulator) -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def factory(url: Optional[str] = None, **kwargs: Any) -> Client:
        client = Client(url or emu.websocket_url, **kwargs)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()
