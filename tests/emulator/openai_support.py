"""Holding what the emulator sends against the official ``openai`` SDK's typed models.

Every event must parse into the *specific* class its ``type`` names (never a fallback), validate
strictly (no coercion), dump back to exactly the JSON that was sent, and carry no field the
SDK's models do not declare, except the few the real service is documented to send anyway.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import typing
from collections.abc import Iterator
from typing import Any, Optional

import pytest

from .conftest import OPENAI_MISSING

# Every test module that imports this one is skipped, with the reason, where the SDK is absent.
pytest.importorskip("openai.lib.responses_websocket", reason=OPENAI_MISSING)

import openai
import pydantic
import websockets.exceptions
from openai.types.responses import (
    Response,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseStreamEvent,
)
from openai.types.responses.responses_server_event import ResponsesServerEvent

from oaiws.testing import Emulator

TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}
MODEL = "gpt-test"

# Fields the real service sends that this SDK's models do not declare (the models accept
# extra fields, so they parse): the API reference's response object shows "store", and its
# function_call_arguments.done event carries the function's "name". Anything else is a
# deviation.
ALLOWED_EXTRAS: tuple[tuple[type[pydantic.BaseModel], str], ...] = (
    (Response, "store"),
    (ResponseFunctionCallArgumentsDoneEvent, "name"),
)


def _variants(union: Any) -> dict[str, type[pydantic.BaseModel]]:
    """``type`` literal -> model class, for a discriminated union of the SDK."""
    members = typing.get_args(typing.get_args(union)[0])
    variants: dict[str, type[pydantic.BaseModel]] = {}
    for cls in members:
        (literal,) = typing.get_args(cls.model_fields["type"].annotation)
        assert literal not in variants, f"two SDK classes for {literal!r}"
        variants[literal] = cls
    return variants


WS_EVENTS = _variants(ResponsesServerEvent)
HTTP_EVENTS = _variants(ResponseStreamEvent)


def unexpected_extras(value: Any, path: str = "$") -> list[str]:
    """Paths of fields no SDK model declares (outside ``ALLOWED_EXTRAS``)."""
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        for key in value.model_extra or {}:
            if not any(isinstance(value, cls) and key == name for cls, name in ALLOWED_EXTRAS):
                found.append(f"{path}.{key} ({type(value).__name__})")
        for name in type(value).model_fields:
            found += unexpected_extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found += unexpected_extras(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += unexpected_extras(item, f"{path}.{key}")
    return found


def dump(model: pydantic.BaseModel) -> dict[str, Any]:
    dumped: dict[str, Any] = model.model_dump(mode="json", exclude_unset=True)
    return dumped


def strict(cls: type[pydantic.BaseModel], raw: dict[str, Any]) -> Any:
    """Validate ``raw`` strictly as ``cls``; it must dump back unchanged and carry no unknown
    field."""
    model = cls.model_validate(raw, strict=True)
    assert dump(model) == raw, f"{cls.__name__} does not round-trip"
    assert unexpected_extras(model) == [], f"fields the SDK does not know: {raw}"
    return model


def check_response(raw: dict[str, Any]) -> Response:
    response: Response = strict(Response, raw)
    return response


def check_ws_event(raw: dict[str, Any], parsed: Any) -> Any:
    """``parsed`` is what the SDK's connection made of ``raw``."""
    cls = WS_EVENTS.get(raw.get("type", ""))
    assert cls is not None, f"no SDK event type for {raw.get('type')!r}"
    assert type(parsed) is cls, f"{raw['type']} parsed as {type(parsed).__name__}"
    assert dump(parsed) == raw
    strict(cls, raw)
    if isinstance(raw.get("response"), dict):
        check_response(raw["response"])
    return parsed


def check_http_event(event: Any) -> Any:
    """An event the SDK parsed from server-sent events (the raw JSON stays inside the SDK)."""
    cls = HTTP_EVENTS.get(event.type)
    assert cls is not None, f"no SDK event type for {event.type!r}"
    assert type(event) is cls, f"{event.type} parsed as {type(event).__name__}"
    raw = dump(event)
    strict(cls, raw)
    if isinstance(raw.get("response"), dict):
        check_response(raw["response"])
    return event


def http_client(emu: Emulator, *, api_key: Optional[str] = None) -> openai.OpenAI:
    """An SDK client that validates every HTTP answer strictly and never retries."""
    verify: Any = ssl.create_default_context(cafile=emu.ca_path) if emu.ca_path else True
    return openai.OpenAI(
        api_key=api_key or emu.api_key,
        base_url=emu.base_url,
        max_retries=0,
        timeout=10.0,
        http_client=openai.DefaultHttpxClient(verify=verify),
        _strict_response_validation=True,
    )


@contextlib.contextmanager
def connect(emu: Emulator, **kwargs: Any) -> Iterator[Any]:
    """``client.responses.connect()`` to the emulator (trusting its CA under TLS)."""
    options: dict[str, Any] = dict(kwargs.pop("websocket_connection_options", {}))
    if emu.ca_path:
        options["ssl"] = ssl.create_default_context(cafile=emu.ca_path)
    options.setdefault("open_timeout", 10)
    client = http_client(emu)
    manager = client.responses.connect(websocket_connection_options=options, **kwargs)
    conn = _enter(manager, tries=3 if emu.ca_path else 1)
    try:
        yield conn
    finally:
        manager.__exit__(None, None, None)


def _enter(manager: Any, tries: int) -> Any:
    """Open the SDK's connection, retrying a failed TLS upgrade.

    The SDK's transport (the websockets sync client) starts its reader thread before it
    writes the upgrade request, so under TLS 1.3 the two threads share one SSL object while
    the server's session tickets arrive; now and then the upgrade stalls or fails with
    ``ssl.SSLError`` (about 1 in 100 upgrades here, none with websocket-client against the
    same emulator; docs/performance.md has the evidence). That is the SDK's bug, not the
    emulator's, so a TLS upgrade is tried up to three times; anything else fails at once.
    """
    for attempt in range(1, tries + 1):
        try:
            return manager.__enter__()
        except (TimeoutError, OSError, websockets.exceptions.WebSocketException):
            if attempt == tries:
                raise
    raise AssertionError("unreachable: tries must be at least 1")


def receive(conn: Any) -> tuple[dict[str, Any], Any]:
    """The next event as (raw JSON, what the SDK parsed), checked against the SDK's types."""
    data = conn.recv_bytes()
    raw: dict[str, Any] = json.loads(data)
    parsed = conn.parse_event(data)
    check_ws_event(raw, parsed)
    return raw, parsed


def until_terminal(conn: Any) -> list[Any]:
    events = []
    while True:
        raw, parsed = receive(conn)
        events.append(parsed)
        if raw["type"] in TERMINAL:
            return events


def turn(conn: Any, **fields: Any) -> list[Any]:
    """Send one ``response.create`` through the SDK and read it to its terminal event."""
    fields.setdefault("model", MODEL)
    conn.response.create(**fields)
    return until_terminal(conn)


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")
