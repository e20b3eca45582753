"""The deterministic model: output is a pure function of the conversation.

The text of a response depends only on the request's ``instructions`` and the normalized
conversation (every earlier input and output of the chain, then the new input). Ids, statuses
and annotations are dropped by the normalization, so a continuation served from the
connection's cache, one hydrated from the store and a full replay of the transcript all
produce the same text: that is what lets tests prove a client's replay is faithful.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

# A normalized item: a tuple of strings, such as ("message", "user", "Hello").
Item = tuple[str, ...]

_WORDS = (
    "amber",
    "bright",
    "calm",
    "delta",
    "ember",
    "fable",
    "granite",
    "harbor",
    "island",
    "jade",
    "kettle",
    "lantern",
    "meadow",
    "nimble",
    "orbit",
    "pebble",
    "quartz",
    "river",
    "summit",
    "timber",
    "umber",
    "velvet",
    "willow",
    "xenon",
    "yonder",
    "zephyr",
    "anchor",
    "breeze",
    "cedar",
    "dune",
    "echo",
    "fern",
    "glacier",
    "hollow",
    "ivory",
    "juniper",
    "kernel",
    "lagoon",
    "maple",
    "nectar",
    "opal",
    "prairie",
    "quill",
    "ripple",
    "sable",
    "thistle",
    "upland",
    "vista",
    "wander",
    "yarrow",
    "zenith",
    "atlas",
    "beacon",
    "canyon",
    "drift",
    "estuary",
    "falcon",
    "grove",
    "horizon",
    "inlet",
    "jasper",
    "keystone",
    "lumen",
    "mosaic",
)


def _text_of_content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, Sequence):
        return ""
    parts: list[str] = []
    for part in content:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            parts.append(str(part.get("text", "")))
        elif kind == "refusal":
            parts.append(str(part.get("refusal", "")))
        else:
            parts.append(f"[{kind}]")
    return "".join(parts)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def normalize_item(item: Any) -> Optional[Item]:
    """The parts of one input or output item the model reads (None: ignored, e.g. reasoning)."""
    if not isinstance(item, Mapping):
        return ("other", canonical_json(item))
    kind = item.get("type")
    if kind in (None, "message") and "role" in item:
        return ("message", str(item.get("role")), _text_of_content(item.get("content")))
    if kind == "function_call":
        return ("function_call", str(item.get("name", "")), str(item.get("arguments", "")))
    if kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else _text_of_content(output)
        return ("function_call_output", text)
    if kind == "reasoning":
        return None  # reasoning items are encrypted or summarized; they carry no conversation
    ignored = {"id", "status", "call_id", "annotations", "logprobs"}
    kept = {k: v for k, v in item.items() if k not in ignored}
    return ("other", canonical_json(kept))


def normalize_input(value: Any) -> list[Item]:
    """A request's ``input`` (a string or a list of items) as normalized items."""
    if value is None:
        return []
    if isinstance(value, str):
        return [("message", "user", value)]
    items = (normalize_item(item) for item in value)
    return [item for item in items if item is not None]


def context_size(items: Sequence[Item]) -> int:
    """Bytes the server must read to process these items (what input cost and usage count)."""
    return len(canonical_json(list(items)).encode()) if items else 0


@dataclass(frozen=True)
class TextPlan:
    chunks: tuple[str, ...]

    @property
    def text(self) -> str:
        return "".join(self.chunks)


@dataclass(frozen=True)
class CallPlan:
    name: str
    arguments: str
    chunks: tuple[str, ...]


Plan = Union[TextPlan, CallPlan]


def plan_response(
    context: Sequence[Item],
    *,
    instructions: Optional[str],
    tools: Sequence[Mapping[str, Any]],
    tool_choice: Any,
    deltas: int,
) -> Plan:
    """What the model answers to ``context`` (the whole conversation, new input last)."""
    call = _choose_tool(context, tools, tool_choice)
    if call is not None:
        arguments = canonical_json_compact(example_value(_parameters(call), call.get("name", "")))
        return CallPlan(str(call["name"]), arguments, split_evenly(arguments, max(deltas, 1)))
    return TextPlan(_text_chunks(context, instructions, deltas))


def expected_text(
    input: Any,
    *,
    instructions: Optional[str] = None,
    history: Any = None,
    deltas: int = 8,
) -> str:
    """The text the emulator answers to ``input`` after ``history`` (the earlier items of the
    conversation, as a client would replay them). For tests that assert on exact output."""
    context = normalize_input(history) + normalize_input(input)
    return TextPlan(_text_chunks(context, instructions, deltas)).text


def _text_chunks(
    context: Sequence[Item], instructions: Optional[str], deltas: int
) -> tuple[str, ...]:
    if deltas <= 0:
        return ()
    seed = hashlib.sha256(canonical_json([instructions, list(context)]).encode()).digest()
    stream = _byte_stream(seed)
    chunks: list[str] = []
    if context and context[-1][0] == "function_call_output":
        # The answer to a tool result quotes it, so a test can see the output reached the model.
        chunks.append(f"Tool result: {context[-1][1]}.")
    while len(chunks) < deltas:
        word = _WORDS[next(stream) % len(_WORDS)]
        chunks.append(word.capitalize() if not chunks else " " + word)
    if len(chunks) > 1 or not chunks[0].endswith("."):
        chunks[-1] += "."
    return tuple(chunks)


def _byte_stream(seed: bytes) -> Any:
    counter = 0
    while True:
        yield from hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1


def _function_tools(tools: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [
        t
        for t in tools
        if isinstance(t, Mapping) and t.get("type") == "function" and isinstance(t.get("name"), str)
    ]


def _choose_tool(
    context: Sequence[Item], tools: Sequence[Mapping[str, Any]], tool_choice: Any
) -> Optional[Mapping[str, Any]]:
    """The tool-call trigger (documented in docs/emulator.md):

    - ``tool_choice={"type": "function", "name": X}`` calls X;
    - ``tool_choice="required"`` calls the tool the last user message names, else the first;
    - ``"auto"`` (the default) calls a tool only when the last input item is a user message
      naming it as a whole word (the earliest mentioned wins);
    - ``"none"`` never calls.
    """
    functions = _function_tools(tools)
    if not functions or tool_choice == "none":
        return None
    if isinstance(tool_choice, Mapping) and tool_choice.get("type") == "function":
        wanted = tool_choice.get("name")
        return next((t for t in functions if t["name"] == wanted), None)
    named = _tool_named_in_last_user_message(context, functions)
    if named is None and tool_choice == "required":
        return functions[0]
    return named


def _tool_named_in_last_user_message(
    context: Sequence[Item], functions: Sequence[Mapping[str, Any]]
) -> Optional[Mapping[str, Any]]:
    if not context or context[-1][:2] != ("message", "user"):
        return None
    text = context[-1][2]
    best: Optional[tuple[int, Mapping[str, Any]]] = None
    for tool in functions:
        match = re.search(r"(?<![\w-])" + re.escape(tool["name"]) + r"(?![\w-])", text)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), tool)
    return best[1] if best else None


def _parameters(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    params = tool.get("parameters")
    return params if isinstance(params, Mapping) else {"type": "object", "properties": {}}


def example_value(schema: Any, name: str = "", depth: int = 0) -> Any:
    """A deterministic value that fits a JSON schema: the arguments of an emulated call."""
    if not isinstance(schema, Mapping) or depth > 8:
        return f"example {name}".strip()
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [
                o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")
            ]
            return example_value((non_null or options)[0], name, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties")
        if not isinstance(props, Mapping):
            return {}
        return {str(key): example_value(sub, str(key), depth + 1) for key, sub in props.items()}
    if kind == "array":
        return [example_value(schema.get("items"), name, depth + 1)]
    if kind == "integer":
        minimum = schema.get("minimum")
        return max(1, int(minimum)) if isinstance(minimum, (int, float)) else 1
    if kind == "number":
        minimum = schema.get("minimum")
        return max(1.5, float(minimum)) if isinstance(minimum, (int, float)) else 1.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return f"example {name}".strip()


def canonical_json_compact(value: Any) -> str:
    """Arguments as the real service writes them: compact, keys in schema order."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def split_evenly(text: str, parts: int) -> tuple[str, ...]:
    if not text:
        return ()
    parts = max(1, min(parts, len(text)))
    size, extra = divmod(len(text), parts)
    chunks, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        chunks.append(text[start:end])
        start = end
    return tuple(chunks)


def count_tokens(size_in_bytes: int) -> int:
    """Usage's token estimate: about four bytes per token, like English text."""
    return (size_in_bytes + 3) // 4
