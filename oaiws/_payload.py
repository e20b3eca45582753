"""Checking the fields of a ``response.create`` before anything is sent.

``build_payload(fields)`` returns the event to send, or raises ``ConfigurationError`` with a
message that says what to change: bad input never reaches the network.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from . import _json
from .errors import ConfigurationError

__all__ = ["build_payload"]

# Fields the WebSocket transport decides itself: streaming is implicit, background mode does
# not exist over a socket, and the event type is ours to set.
_REFUSED_FIELDS = {
    "stream": "WebSocket mode always streams: remove stream= (use create_response() for a "
    "single finished Response)",
    "stream_options": "WebSocket mode has no stream_options: remove it",
    "background": "background mode is not supported over WebSocket: remove background= "
    "(or use the HTTP API for background responses)",
    "type": "type is set by oaiws (response.create): remove it",
}
_STR_FIELDS = (
    "previous_response_id",
    "instructions",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
    "truncation",
)
_BOOL_FIELDS = ("store", "parallel_tool_calls", "generate")
_LIST_FIELDS = ("tools", "include", "context_management")
_MAPPING_FIELDS = ("metadata", "reasoning", "text")
_STREAM_ID = re.compile(r"[A-Za-z0-9_.-]{1,256}")


def build_payload(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Check the ``response.create`` fields and build the event, before any network traffic.

    Keys whose value is ``None`` are left out: the server rejects explicit nulls.
    Raises ``ConfigurationError`` with a message that says what to change.
    """
    payload: dict[str, Any] = {"type": "response.create"}
    for key, value in fields.items():
        if key in _REFUSED_FIELDS:
            if key == "background" and not value:
                continue  # background=False asks for what we do anyway
            if value is not None or key == "type":
                raise ConfigurationError(_REFUSED_FIELDS[key])
        if value is not None:
            payload[key] = value

    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ConfigurationError("model must be a non-empty string, e.g. model='gpt-5.5'")
    if "input" in payload:
        payload["input"] = _check_input(payload["input"])
    elif (
        "previous_response_id" not in payload
        and "prompt" not in payload
        and payload.get("generate") is not False  # a warm-up may carry no input
    ):
        raise ConfigurationError("input is required: a string or a list of input items")
    for key in _STR_FIELDS:
        if key in payload and not isinstance(payload[key], str):
            raise ConfigurationError(f"{key} must be a str, not {type(payload[key]).__name__}")
    if payload.get("previous_response_id") == "":
        raise ConfigurationError("previous_response_id must not be empty: leave it out instead")
    for key in _BOOL_FIELDS:
        if key in payload and not isinstance(payload[key], bool):
            raise ConfigurationError(f"{key} must be True or False")
    for key in _LIST_FIELDS:
        if key in payload:
            payload[key] = _check_list(key, payload[key])
    for key in _MAPPING_FIELDS:
        if key in payload and not isinstance(payload[key], Mapping):
            raise ConfigurationError(f"{key} must be a dict, not {type(payload[key]).__name__}")
    if "metadata" in payload and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in payload["metadata"].items()
    ):
        raise ConfigurationError("metadata keys and values must be strings")
    if "max_output_tokens" in payload:
        value = payload["max_output_tokens"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigurationError("max_output_tokens must be a positive integer")
    for key in ("temperature", "top_p"):
        if key in payload and not _is_number(payload[key]):
            raise ConfigurationError(f"{key} must be a finite number")
    if "stream_id" in payload and not (
        isinstance(payload["stream_id"], str) and _STREAM_ID.fullmatch(payload["stream_id"])
    ):
        raise ConfigurationError("stream_id must be 1-256 characters of A-Z a-z 0-9 _ . -")
    try:
        # As bytes, as it will be sent: a lone surrogate is valid in a str but not in UTF-8.
        _json.dumpb(payload)
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"the request cannot be sent as JSON: {error}") from None
    return payload


def _check_input(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return [_as_item(item) for item in value]
    raise ConfigurationError(
        f"input must be a string or a list of input items (dicts), not {type(value).__name__}"
    )


def _as_item(item: Any) -> Any:
    if isinstance(item, Mapping):
        return item
    dump = getattr(item, "model_dump", None)  # typed models of the openai package
    if callable(dump):
        return dump(exclude_none=True)
    raise ConfigurationError(
        f"each input item must be a dict like {{'role': 'user', 'content': '...'}}, "
        f"not {type(item).__name__}"
    )


def _check_list(key: str, value: Any) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ConfigurationError(f"{key} must be a list, not {type(value).__name__}")
    return [_as_item(item) if key == "tools" else item for item in value]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
