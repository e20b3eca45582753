"""Validation of a ``response.create`` (WebSocket) or ``POST /v1/responses`` body.

Everything a client can send ends up either as a :class:`CreateRequest` or as a
:class:`RequestError` that the transport turns into the right error shape: nothing a client
sends may raise anything else.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from oaiws.errors import ConfigurationError

from ._faults import Fault
from ._model import Item, normalize_input

STREAM_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,256}")

# Fields the WebSocket transport refuses: streaming is implicit there and background mode is
# not supported (PROTOCOL.md section 2).
_WEBSOCKET_FORBIDDEN = ("stream", "stream_options", "background")

OUTCOMES = ("completed", "failed", "incomplete")
INCOMPLETE_REASONS = ("max_output_tokens", "max_messages", "content_filter", "steered")
# What a response does with response.steer (docs/emulator.md, "Steering").
STEERING_MODES = ("supported", "unsupported", "successor_fails")


class RequestError(Exception):
    """An error the server answers with; rendered per transport (nested WS, flat SSE, HTTP)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        code: Optional[str] = None,
        param: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def fields(self) -> dict[str, Any]:
        return {"type": self.type, "code": self.code, "message": self.message, "param": self.param}

    def websocket_event(self, stream_id: Optional[str] = None) -> dict[str, Any]:
        error = self.fields()
        if self.headers:
            error["headers"] = dict(self.headers)
        event: dict[str, Any] = {"type": "error", "status": self.status, "error": error}
        if stream_id is not None:
            event["stream_id"] = stream_id
        return event

    def sse_event(self, sequence_number: int) -> dict[str, Any]:
        return {
            "type": "error",
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "sequence_number": sequence_number,
        }

    def http_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(
    message: str, *, param: Optional[str], code: Optional[str] = "invalid_value"
) -> RequestError:
    return RequestError(message, code=code, param=param)


@dataclass(frozen=True)
class Controls:
    """Per-request behaviour chosen by metadata or the model name (docs/emulator.md)."""

    deltas: int
    delta_delay: float
    first_event_delay: float
    outcome: str
    incomplete_reason: str
    fault: Optional[Fault]
    steering: str = "supported"
    finish_delay: float = 0.0


@dataclass(frozen=True)
class CreateRequest:
    body: dict[str, Any]
    model: str
    input_items: list[dict[str, Any]]
    new_context: list[Item]
    instructions: Optional[str]
    tools: list[dict[str, Any]]
    tool_choice: Any
    previous_response_id: Optional[str]
    store: bool
    metadata: dict[str, str]
    max_output_tokens: Optional[int]
    generate: bool
    stream_id: Optional[str]
    stream: bool
    controls: Controls
    background: bool = False


def parse_create(
    body: Any,
    *,
    websocket: bool,
    default_model: Optional[str],
    deltas: int,
    delta_delay: float,
    first_event_delay: float,
) -> CreateRequest:
    """Validate one create body; ``body`` is the decoded JSON (``type`` included on a socket)."""
    if not isinstance(body, Mapping):
        raise invalid("The request body must be a JSON object.", param=None, code="invalid_type")
    fields = {str(k): v for k, v in body.items() if k != "type"}
    if websocket:
        for name in _WEBSOCKET_FORBIDDEN:
            if name in fields:
                raise RequestError(
                    f"Unsupported parameter: '{name}'. It is not supported in WebSocket mode"
                    " (responses are always streamed; background mode is unavailable).",
                    code="unsupported_parameter",
                    param=name,
                )
        for name, value in fields.items():
            if value is None:
                raise RequestError(
                    f"Invalid value for '{name}': null is not allowed; omit the field instead.",
                    code="invalid_type",
                    param=name,
                )
    else:
        # HTTP bodies may carry nulls: the real service reads them as "not given".
        fields = {k: v for k, v in fields.items() if v is not None}

    model = fields.get("model", default_model)
    if model is None:
        raise RequestError(
            "Missing required parameter: 'model'.", code="missing_required_parameter", param="model"
        )
    if not isinstance(model, str) or not model.strip():
        raise invalid(
            "Invalid type for 'model': expected a non-empty string.",
            param="model",
            code="invalid_type",
        )

    raw_input = fields.get("input", [])
    input_items = _input_items(raw_input)
    instructions = fields.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise invalid(
            "Invalid type for 'instructions': expected a string.",
            param="instructions",
            code="invalid_type",
        )
    tools = fields.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
        raise invalid(
            "Invalid type for 'tools': expected an array of objects.",
            param="tools",
            code="invalid_type",
        )
    tool_choice = fields.get("tool_choice", "auto")
    _check_tool_choice(tool_choice, tools)
    previous = fields.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise invalid(
            "Invalid type for 'previous_response_id': expected a string.",
            param="previous_response_id",
            code="invalid_type",
        )
    store = fields.get("store", True)
    generate = fields.get("generate", True)
    stream = fields.get("stream", False)
    background = fields.get("background", False)
    for name, value in (
        ("store", store),
        ("generate", generate),
        ("stream", stream),
        ("background", background),
    ):
        if not isinstance(value, bool):
            raise invalid(
                f"Invalid type for '{name}': expected a boolean.", param=name, code="invalid_type"
            )
    if background and not store:
        # The real service keeps a background response so that it can be polled: stateless
        # background requests are refused.
        raise invalid(
            "Background mode requires store=true: a background response is stored so that it can"
            " be retrieved. Remove 'store': false or 'background': true.",
            param="background",
        )
    max_output_tokens = fields.get("max_output_tokens")
    if max_output_tokens is not None and (
        not isinstance(max_output_tokens, int)
        or isinstance(max_output_tokens, bool)
        or max_output_tokens < 1
    ):
        raise invalid(
            "Invalid 'max_output_tokens': expected a positive integer.", param="max_output_tokens"
        )
    metadata = fields.get("metadata", {})
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise invalid(
            "Invalid 'metadata': expected an object of string values.",
            param="metadata",
            code="invalid_type",
        )
    stream_id = fields.get("stream_id")
    if stream_id is not None and (
        not isinstance(stream_id, str) or not STREAM_ID_PATTERN.fullmatch(stream_id)
    ):
        raise RequestError(
            "Invalid 'stream_id': use 1-256 characters of letters, digits, '_', '.' and '-'.",
            code="invalid_stream_id",
            param="stream_id",
        )

    controls = _controls(model, dict(metadata), deltas, delta_delay, first_event_delay)
    return CreateRequest(
        body=fields,
        model=model,
        input_items=input_items,
        new_context=normalize_input(input_items),
        instructions=instructions,
        tools=[dict(t) for t in tools],
        tool_choice=tool_choice,
        previous_response_id=previous,
        store=store,
        metadata=dict(metadata),
        max_output_tokens=max_output_tokens,
        generate=generate,
        stream_id=stream_id,
        stream=stream,
        controls=controls,
        background=background,
    )


def _input_items(raw: Any) -> list[dict[str, Any]]:
    """The input as a list of items with ids (what ``input_items`` lists later)."""
    if isinstance(raw, str):
        raw = [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}
        ]
    if not isinstance(raw, list) or not all(isinstance(item, Mapping) for item in raw):
        raise invalid(
            "Invalid type for 'input': expected a string or an array of items.",
            param="input",
            code="invalid_type",
        )
    items = []
    for item in raw:
        copied = dict(item)
        if "role" in copied:
            copied.setdefault("type", "message")
            if isinstance(copied.get("content"), str):
                copied["content"] = [{"type": "input_text", "text": copied["content"]}]
            copied.setdefault("id", new_id("msg"))
            copied.setdefault("status", "completed")
        items.append(copied)
    return items


def _check_tool_choice(tool_choice: Any, tools: list[Any]) -> None:
    if tool_choice in ("auto", "none", "required"):
        return
    if isinstance(tool_choice, Mapping):
        if tool_choice.get("type") != "function":
            return  # hosted-tool choices are accepted and ignored: the emulator has no hosted tools
        name = tool_choice.get("name")
        if any(t.get("type") == "function" and t.get("name") == name for t in tools):
            return
        raise invalid(f"Tool choice '{name}' not found in 'tools' parameter.", param="tool_choice")
    raise invalid("Invalid value for 'tool_choice'.", param="tool_choice")


def _controls(
    model: str, metadata: dict[str, str], deltas: int, delta_delay: float, first_event_delay: float
) -> Controls:
    # The model-name form, "any-model@deltas=3,outcome=failed", for clients that cannot set
    # metadata; metadata wins when both are given.
    settings: dict[str, str] = {}
    if "@" in model:
        for pair in model.split("@", 1)[1].split(","):
            key, sep, value = pair.partition("=")
            if sep:
                settings["emulator_" + key.strip()] = value.strip()
    settings.update({k: v for k, v in metadata.items() if k.startswith("emulator_")})

    def number(key: str, default: float, *, integer: bool = False) -> Any:
        raw = settings.get(key)
        if raw is None:
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            raise invalid(
                f"Invalid value for metadata '{key}': {raw!r} is not a number.", param="metadata"
            ) from None
        if value < 0 or not math.isfinite(value):
            raise invalid(
                f"Invalid value for metadata '{key}': must not be negative.", param="metadata"
            )
        return value

    def choice(key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = settings.get(key, default)
        if value not in allowed:
            raise invalid(
                f"Invalid value for metadata '{key}': {value!r}"
                f" (expected one of {', '.join(allowed)}).",
                param="metadata",
            )
        return str(value)

    outcome = choice("emulator_outcome", "completed", OUTCOMES)
    reason = choice("emulator_incomplete_reason", "max_output_tokens", INCOMPLETE_REASONS)
    steering = choice("emulator_steering", "supported", STEERING_MODES)
    fault: Optional[Fault] = None
    if "emulator_fault" in settings:
        try:
            fault = Fault.from_dict(settings["emulator_fault"])
        except ConfigurationError as exc:
            raise invalid(f"Invalid metadata 'emulator_fault': {exc}", param="metadata") from None
    return Controls(
        deltas=number("emulator_deltas", deltas, integer=True),
        delta_delay=number("emulator_delta_delay_ms", delta_delay * 1000.0) / 1000.0,
        first_event_delay=number("emulator_first_event_delay_ms", first_event_delay * 1000.0)
        / 1000.0,
        outcome=outcome,
        incomplete_reason=reason,
        fault=fault,
        steering=steering,
        finish_delay=number("emulator_finish_delay_ms", 0.0) / 1000.0,
    )


def new_id(prefix: str) -> str:
    """An id shaped like the real service's: a prefix and 48 hex digits."""
    return f"{prefix}_{secrets.token_hex(24)}"
