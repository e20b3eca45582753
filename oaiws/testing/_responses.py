"""Response objects and output items shaped like the real API's, so typed clients parse them."""

from __future__ import annotations

import time
from typing import Any, Optional

from ._model import count_tokens
from ._requests import CreateRequest


def response_object(
    request: CreateRequest, response_id: str, created_at: int, *, status: str = "in_progress"
) -> dict[str, Any]:
    """The ``response`` of ``response.created``: in progress (a background one queued first), no
    output yet."""
    body = request.body
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": request.background,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": body.get("max_tool_calls"),
        "model": request.model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": request.previous_response_id,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": body.get("reasoning", {"effort": None, "summary": None}),
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": body.get("service_tier", "default"),
        "store": request.store,
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text", {"format": {"type": "text"}, "verbosity": "medium"}),
        "tool_choice": request.tool_choice,
        "tools": [_echo_tool(tool) for tool in request.tools],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": None,
        "user": body.get("user"),
        "metadata": dict(request.metadata),
    }


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    echoed = dict(tool)
    if echoed.get("type") == "function":
        # The service fills these in when echoing a function tool.
        echoed.setdefault("description", None)
        echoed.setdefault("parameters", None)
        echoed.setdefault("strict", True)
    return echoed


def usage(input_bytes: int, cached_bytes: int, output_tokens: int) -> dict[str, Any]:
    input_tokens = count_tokens(input_bytes)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": min(count_tokens(cached_bytes), input_tokens),
            "cache_write_tokens": 0,
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def finish(
    response: dict[str, Any],
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: Optional[dict[str, Any]],
    error: Optional[dict[str, Any]] = None,
    incomplete_reason: Optional[str] = None,
) -> dict[str, Any]:
    """A copy of ``response`` in its terminal state."""
    done = dict(response)
    done["status"] = status
    done["output"] = output
    done["usage"] = usage
    done["error"] = error
    done["incomplete_details"] = {"reason": incomplete_reason} if incomplete_reason else None
    done["completed_at"] = int(time.time()) if status == "completed" else None
    return done


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def message_item(item_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": content,
        "role": "assistant",
    }


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }
