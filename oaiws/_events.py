"""Server events, the finished ``Response``, and the accumulator that builds one from the other.

An event is kept as the dict the JSON decoder produced: wrapping it costs one object, and every
field stays reachable by key (``event["delta"]``) and by attribute (``event.delta``). Nested
objects are wrapped only when read by attribute, so the hot path (one delta after another)
never copies anything. Unknown event types pass through untouched.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterator, Mapping
from typing import Any, Optional

from .errors import ProtocolError

__all__ = ["TERMINAL_EVENT_TYPES", "Event", "Fields", "Response", "ResponseAccumulator"]

# The events that end one request. ``response.done`` is what some servers send instead of
# ``response.completed``; a request-scoped ``error`` ends it too but is raised, not yielded.
TERMINAL_EVENT_TYPES = frozenset(
    {"response.completed", "response.failed", "response.incomplete", "response.done"}
)


def _wrap(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        return Fields(value, where)
    if isinstance(value, list):
        return _wrap_list(value, where)
    return value


def _wrap_list(value: list[Any], where: str) -> list[Any]:
    # Without recursion: the server's arrays may nest as deep as the JSON decoder allows
    # (about a thousand levels), more than Python's stack.
    wrapped: list[Any] = []
    pending = [(value, wrapped)]
    while pending:
        source, target = pending.pop()
        for item in source:
            if isinstance(item, dict):
                target.append(Fields(item, where))
            elif isinstance(item, list):
                inner: list[Any] = []
                target.append(inner)
                pending.append((item, inner))
            else:
                target.append(item)
    return wrapped


# What a server value looks like in a message or a repr when its own repr cannot be had or
# would not fit: a few levels and items of it, long strings cut.
_BRIEF = reprlib.Repr()
_BRIEF.maxlevel = 4
_BRIEF.maxstring = 80
_BRIEF.maxother = 80


def brief(value: Any) -> str:
    """A short repr of a value the server sent, whatever its size or nesting."""
    return _BRIEF.repr(value)


def _full_repr(value: dict[str, Any]) -> str:
    try:
        return repr(value)
    except RecursionError:  # nested deeper than repr can go: show the top of it
        return brief(value)


class Fields(Mapping[str, Any]):
    """A read-only view of a JSON object: every field by key and by attribute.

    Reading by key gives the raw value (dicts stay dicts); reading by attribute wraps nested
    objects in ``Fields`` too, so ``event.response.usage.output_tokens`` works.
    """

    __slots__ = ("_data", "_where")

    def __init__(self, data: dict[str, Any], where: str = "object") -> None:
        self._data = data
        self._where = where

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __getattr__(self, name: str) -> Any:
        # Dunder and private lookups (copy, pickle, our own slots before __init__) must not
        # be answered from the payload.
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            value = self._data[name]
        except KeyError:
            fields = ", ".join(sorted(self._data)) or "none"
            message = f"{self._where} has no field {name!r} (fields: {fields})"
            raise AttributeError(message) from None
        return _wrap(value, f"{self._where}.{name}")

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._data})

    def to_dict(self) -> dict[str, Any]:
        """The underlying JSON object (the same dict, not a copy)."""
        return self._data

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Fields):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable contents, like a dict

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_full_repr(self._data)})"


class Event(Fields):
    """One server event. ``type`` is always readable (``None`` if the server sent none)."""

    __slots__ = ()

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data
        self._where = "event"

    @property
    def type(self) -> Optional[str]:
        value = self._data.get("type")
        return value if isinstance(value, str) else None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            value = self._data[name]
        except KeyError:
            fields = ", ".join(sorted(self._data))
            message = f"{self.type!r} event has no field {name!r} (fields: {fields})"
            raise AttributeError(message) from None
        if value.__class__ is str:
            return value  # event.delta, the most read field: nothing to wrap
        return _wrap(value, name)

    def __repr__(self) -> str:
        return f"Event({_full_repr(self._data)})"


_SCALARS = frozenset({str, int, float, bool})


def _hot_field(name: str) -> property:
    """A property for a field read on most events, ``event.delta`` above all.

    An attribute that is not on the class is found by ``__getattr__`` only after the normal
    lookup has raised and caught an ``AttributeError``, several times slower than a property
    (docs/performance.md), and paid on every delta of every stream. Objects, lists and
    ``None`` (absent, or an explicit null) still go through ``__getattr__``, which wraps
    them, or raises the error that names the fields.
    """

    def read(self: Event) -> Any:
        value = self._data.get(name)
        if value.__class__ in _SCALARS:
            return value
        return self.__getattr__(name)

    return property(read, doc=f"The event's ``{name}`` field.")


# Set after the class so that type checkers keep reading these through ``__getattr__`` (Any).
for _name in (
    "delta",
    "item_id",
    "output_index",
    "content_index",
    "sequence_number",
    "response",
    "item",
    "text",
    "arguments",
):
    setattr(Event, _name, _hot_field(_name))
del _name


class Response(Fields):
    """A response of the Responses API, finished or (in ``StreamInterruptedError``) partial.

    Every field of the server's response object is readable by attribute and key; the common
    ones are properties that give ``None`` when the server left them out.
    """

    __slots__ = ()

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data
        self._where = "response"

    @property
    def id(self) -> Optional[str]:
        return _str_field(self._data, "id")

    @property
    def status(self) -> Optional[str]:
        """``completed``, ``failed``, ``incomplete`` (not errors); ``in_progress`` if partial."""
        return _str_field(self._data, "status")

    @property
    def model(self) -> Optional[str]:
        return _str_field(self._data, "model")

    @property
    def output(self) -> list[Fields]:
        return [Fields(item, "output item") for item in _items_of(self._data.get("output"))]

    @property
    def output_text(self) -> str:
        """The text of every ``output_text`` part of every message, concatenated."""
        texts: list[str] = []
        for item in _items_of(self._data.get("output")):
            if item.get("type") != "message":
                continue
            for part in _items_of(item.get("content")):
                if isinstance(part, dict) and part.get("type") == "output_text":
                    text = part.get("text")
                    if isinstance(text, str):
                        texts.append(text)
        return "".join(texts)

    @property
    def function_calls(self) -> list[Fields]:
        """The output items of type ``function_call`` (``call_id``, ``name``, ``arguments``)."""
        return [item for item in self.output if item.get("type") == "function_call"]

    @property
    def usage(self) -> Optional[Fields]:
        return self._optional_fields("usage")

    @property
    def error(self) -> Optional[Fields]:
        """``{code, message}`` of a failed response; ``None`` otherwise."""
        return self._optional_fields("error")

    @property
    def incomplete_details(self) -> Optional[Fields]:
        """``{reason}`` of an incomplete response (e.g. ``max_output_tokens``)."""
        return self._optional_fields("incomplete_details")

    def _optional_fields(self, name: str) -> Optional[Fields]:
        value = self._data.get(name)
        return Fields(value, f"response.{name}") if isinstance(value, dict) else None

    def __repr__(self) -> str:
        return f"Response(id={self.id!r}, status={self.status!r}, output_text={self.output_text!r})"


def _items_of(value: Any) -> list[dict[str, Any]]:
    """The objects of a list field; nothing when the server sent something else."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def _str_field(data: dict[str, Any], name: str) -> Optional[str]:
    value = data.get(name)
    return value if isinstance(value, str) else None


class ResponseAccumulator:
    """Builds a ``Response`` from a request's events, fed one at a time.

    The response snapshot comes from the lifecycle events (``response.created`` ... the terminal
    one); the output is assembled from item, part and delta events, and used whenever the
    terminal event carries no output of its own (some servers send it empty).

    ``add`` only queues the event: the work is done by ``build``, and skipped altogether when
    the terminal event carries the finished output, which is the common case. So a stream pays
    a list append per event, not a parse of it.

    The server is not trusted: output items and parts are kept by the indices the events
    name in sparse maps, never in lists padded up to an index, so the memory used is bounded
    by what arrived whatever index is claimed (items and parts then appear in index order).
    An ``output_index`` or ``content_index`` that is not a non-negative integer makes
    ``build`` raise ``ProtocolError``; any other field of the wrong type is ignored.
    """

    __slots__ = ("_args", "_chunks", "_items", "_parts", "_queued", "_snapshot", "terminal_type")

    def __init__(self) -> None:
        self._queued: list[Mapping[str, Any]] = []
        self._snapshot: dict[str, Any] = {}
        self._items: dict[int, dict[str, Any]] = {}  # output_index -> item
        self._parts: dict[int, dict[int, dict[str, Any]]] = {}  # output_index -> index -> part
        self._chunks: dict[tuple[int, int, str], list[str]] = {}
        self._args: dict[int, list[str]] = {}
        self.terminal_type: Optional[str] = None

    def add(self, data: Mapping[str, Any]) -> None:
        self._queued.append(data)
        kind = data.get("type")
        if kind in TERMINAL_EVENT_TYPES:
            self.terminal_type = str(kind)

    def build(self) -> Response:
        """The response as known so far: final after a terminal event, partial before.

        Raises ``ProtocolError`` when an event names an invalid index (see the class).
        """
        queued, self._queued = self._queued, []
        last = queued[-1] if queued else None
        if (
            last is not None
            and last.get("type") in TERMINAL_EVENT_TYPES
            and not self._items
            and not self._parts
        ):
            response = last.get("response")
            if isinstance(response, dict) and _is_list(response.get("output")):
                self._snapshot = response
                return Response(dict(response))
        for data in queued:
            self._apply(data)
        self._flush()
        data = dict(self._snapshot)
        if not _is_list(data.get("output")) and (self._items or self._parts):
            data["output"] = self._assemble()
        return Response(data)

    def _apply(self, data: Mapping[str, Any]) -> None:
        kind = data.get("type")
        # Most frequent first: a response is mostly deltas.
        if kind == "response.output_text.delta":
            self._add_chunk(data, "text", data.get("delta"))
        elif kind == "response.function_call_arguments.delta":
            delta = data.get("delta")
            index = _index(data, "output_index")
            if isinstance(delta, str):
                self._args.setdefault(index, []).append(delta)
        elif kind in TERMINAL_EVENT_TYPES or kind in (
            "response.created",
            "response.in_progress",
            "response.queued",
        ):
            response = data.get("response")
            if isinstance(response, dict):
                self._snapshot = response
        elif kind in ("response.output_item.added", "response.output_item.done"):
            index = _index(data, "output_index")
            item = data.get("item")
            if isinstance(item, dict):
                self._items[index] = _copy_item(item)
                self._drop_pending(index)
        elif kind in ("response.content_part.added", "response.content_part.done"):
            output_index = _index(data, "output_index")
            content_index = _index(data, "content_index")
            part = data.get("part")
            if isinstance(part, dict):
                self._parts.setdefault(output_index, {})[content_index] = dict(part)
                if kind == "response.content_part.done":
                    # The finished part carries the whole text: pending deltas are in it.
                    self._chunks.pop((output_index, content_index, "text"), None)
                    self._chunks.pop((output_index, content_index, "refusal"), None)
        elif kind == "response.output_text.done":
            self._finish_part(data, "output_text", "text", data.get("text"))
        elif kind == "response.refusal.delta":
            self._add_chunk(data, "refusal", data.get("delta"))
        elif kind == "response.refusal.done":
            self._finish_part(data, "refusal", "refusal", data.get("refusal"))
        elif kind == "response.function_call_arguments.done":
            index = _index(data, "output_index")
            arguments = data.get("arguments")
            self._args.pop(index, None)
            item = self._items.get(index)
            if item is not None and isinstance(arguments, str):
                item["arguments"] = arguments

    def _add_chunk(self, data: Mapping[str, Any], key: str, delta: Any) -> None:
        where = (_index(data, "output_index"), _index(data, "content_index"), key)
        if isinstance(delta, str):
            chunks = self._chunks.get(where)
            if chunks is None:
                self._chunks[where] = [delta]
            else:
                chunks.append(delta)

    def _part(self, output_index: int, content_index: int, part_type: str) -> dict[str, Any]:
        """The part at these indices, to complete: from a part event, else a copy of the
        item's own part, else a new one of ``part_type``."""
        parts = self._parts.setdefault(output_index, {})
        part = parts.get(content_index)
        if part is None:
            content = self._items.get(output_index, {}).get("content")
            existing = (
                content[content_index]
                if isinstance(content, list) and content_index < len(content)
                else None
            )
            part = (
                dict(existing) if isinstance(existing, dict) and existing else {"type": part_type}
            )
            parts[content_index] = part
        return part

    def _finish_part(self, data: Mapping[str, Any], part_type: str, key: str, value: Any) -> None:
        output_index = _index(data, "output_index")
        content_index = _index(data, "content_index")
        if isinstance(value, str):
            # The finished text replaces the deltas it is made of.
            self._chunks.pop((output_index, content_index, key), None)
            self._part(output_index, content_index, part_type)[key] = value

    def _drop_pending(self, output_index: int) -> None:
        """An item event carries the item whole: what was pending for it is in it."""
        if self._chunks:
            for where in [w for w in self._chunks if w[0] == output_index]:
                del self._chunks[where]
        self._parts.pop(output_index, None)
        self._args.pop(output_index, None)

    def _flush(self) -> None:
        """Join pending deltas into their parts (idempotent: the chunk lists are emptied)."""
        for (output_index, content_index, key), chunks in self._chunks.items():
            part_type = "output_text" if key == "text" else "refusal"
            part = self._part(output_index, content_index, part_type)
            previous = part.get(key)
            part[key] = (previous if isinstance(previous, str) else "") + "".join(chunks)
        self._chunks.clear()
        for output_index, pieces in self._args.items():
            item = self._items.setdefault(output_index, {"type": "function_call"})
            previous = item.get("arguments")
            item["arguments"] = (previous if isinstance(previous, str) else "") + "".join(pieces)
        self._args.clear()

    def _assemble(self) -> list[dict[str, Any]]:
        """The output items in index order, each with its parts merged in."""
        output = []
        for index in sorted(self._items.keys() | self._parts.keys()):
            item = self._items.get(index)
            if item is None:
                # Parts before their item (a server skipping output_item.added): a message.
                item = {"type": "message", "role": "assistant", "content": []}
            parts = self._parts.get(index)
            if parts:
                item = dict(item)
                content = item.get("content")
                merged = list(content) if isinstance(content, list) else []
                for content_index in sorted(parts):
                    if content_index < len(merged):
                        merged[content_index] = parts[content_index]
                    else:
                        merged.append(parts[content_index])
                item["content"] = merged
            output.append(item)
        return output


def _is_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value)


def _index(data: Mapping[str, Any], key: str) -> int:
    """An ``output_index`` or ``content_index``: absent means 0 (some servers leave it out);
    anything but a non-negative integer is a lie that the response cannot be built from."""
    value = data.get(key, 0)
    if value.__class__ is int and value >= 0:
        return int(value)
    raise ProtocolError(
        f"the server sent a {data.get('type')!r} event whose {key} is {brief(value)}, not a "
        "non-negative integer: the response cannot be assembled from its events"
    )


def _copy_item(item: dict[str, Any]) -> dict[str, Any]:
    # The caller holds the event that carried this item: never mutate what they see.
    copy = dict(item)
    content = copy.get("content")
    if isinstance(content, list):
        copy["content"] = [dict(part) if isinstance(part, dict) else part for part in content]
    return copy
