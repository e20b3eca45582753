"""Steering (``response.steer``): what a steer may carry, the responses of one connection it
can name, and the ``response.steer.*`` events that answer it (docs/emulator.md, "Steering").

A :class:`SteerTarget` follows one response of a connection from the moment its id exists:
queued (the id is not public yet), active (``response.created`` sent), then its terminal
status. While it accepts steers they queue on it; the response stops at its next text delta
boundary, and once its terminal event is out the session settles them: a successor response
(the commit point of their input), ``response.steer.pending`` when the response waits for
client-owned tool output, or ``response.steer.failed`` when no successor can be created.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from ._model import normalize_input
from ._requests import CreateRequest, RequestError, _input_items, new_id
from ._state import Chain

# Accepted steers waiting for their successor, per response (the real limit is unpublished).
MAX_PENDING_STEERS = 4
# Responses of one connection that a steer can still name; older ones are "not found".
TARGETS_KEPT = 1024

_STEER_FIELDS = frozenset({"type", "previous_response_id", "input"})
_MESSAGE_FIELDS = frozenset({"type", "role", "content"})
_PART_TYPES = ("input_text", "input_image", "input_file")
_MISSING = object()


class SteerInvalid(Exception):
    """The steer failed validation: answered with ``invalid_input``."""


def steer_target_id(payload: Mapping[str, Any]) -> str:
    """The steered response's id; a plain ``error`` event when there is none to name."""
    previous = payload.get("previous_response_id")
    if previous is None:
        raise RequestError(
            "Missing required parameter: 'previous_response_id'.",
            code="missing_required_parameter",
            param="previous_response_id",
        )
    if not isinstance(previous, str) or not previous:
        raise RequestError(
            "Invalid type for 'previous_response_id': expected a non-empty string.",
            code="invalid_type",
            param="previous_response_id",
        )
    return previous


def steer_input_items(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The steer's input as message items (ids added), or :class:`SteerInvalid`."""
    extra = sorted(str(name) for name in payload if name not in _STEER_FIELDS)
    if extra:
        raise SteerInvalid(
            f"Unsupported field(s) in response.steer: {', '.join(map(repr, extra))}. A steer"
            " carries only 'type', 'previous_response_id' and 'input' (the target response"
            " determines the lane)."
        )
    raw = payload.get("input", _MISSING)
    if raw is _MISSING:
        raise SteerInvalid("Missing required parameter: 'input'.")
    if isinstance(raw, str):
        if not raw:
            raise SteerInvalid("Invalid 'input': expected a non-empty string.")
        return _input_items(raw)
    if not isinstance(raw, list) or not raw:
        raise SteerInvalid(
            "Invalid 'input': expected a non-empty string or a non-empty array of user messages."
        )
    for index, item in enumerate(raw):
        _check_message(item, f"input[{index}]")
    return _input_items(raw)


def _check_message(item: Any, where: str) -> None:
    if not isinstance(item, Mapping):
        raise SteerInvalid(f"Invalid '{where}': expected a message object.")
    extra = sorted(str(name) for name in item if name not in _MESSAGE_FIELDS)
    if extra:
        raise SteerInvalid(
            f"Invalid '{where}': unsupported field(s) {', '.join(map(repr, extra))}; a steering"
            " message carries only 'type', 'role' and 'content'."
        )
    if item.get("type", "message") != "message":
        raise SteerInvalid(
            f"Invalid '{where}.type': steering accepts only messages, not {item.get('type')!r}."
        )
    if item.get("role") != "user":
        raise SteerInvalid(
            f"Invalid '{where}.role': steering accepts only 'user' messages, not"
            f" {item.get('role')!r}."
        )
    content = item.get("content", _MISSING)
    if isinstance(content, str):
        return
    if not isinstance(content, list) or not content:
        raise SteerInvalid(
            f"Invalid '{where}.content': expected a string or a non-empty array of content parts."
        )
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind not in _PART_TYPES:
            raise SteerInvalid(
                f"Invalid '{where}.content[{index}]': expected a part of type"
                f" {', '.join(map(repr, _PART_TYPES))}."
            )
        if kind == "input_text" and not isinstance(part.get("text"), str):
            raise SteerInvalid(f"Invalid '{where}.content[{index}].text': expected a string.")


class EventChannel(Protocol):
    """Where a response's events go: numbered in its sequence, tagged with its lane."""

    async def side_event(self, payload: dict[str, Any]) -> None: ...


@dataclass
class Steer:
    """One ``response.steer`` submission (an id is allocated on receipt)."""

    id: str
    previous_response_id: str
    raw_input: Any  # as sent, returned by response.steer.failed (_MISSING: none was sent)
    items: list[dict[str, Any]] = field(default_factory=list)

    def ref(self) -> dict[str, Any]:
        return {"id": self.id, "previous_response_id": self.previous_response_id}

    def failed_ref(self) -> dict[str, Any]:
        ref = self.ref()
        if self.raw_input is not _MISSING:
            ref["input"] = self.raw_input
        return ref


def new_steer(previous_response_id: str, payload: Mapping[str, Any]) -> Steer:
    return Steer(new_id("steer"), previous_response_id, payload.get("input", _MISSING))


def failed_event(steer: Steer, code: str, message: str) -> dict[str, Any]:
    return {
        "type": "response.steer.failed",
        "steer": steer.failed_ref(),
        "error": {"type": "invalid_request_error", "code": code, "message": message},
    }


class SteerTarget:
    """One response of a connection, as a steer sees it."""

    def __init__(self, registry: SteeringRegistry, request: CreateRequest) -> None:
        self.registry = registry
        self.request = request
        self.stream_id = request.stream_id
        self.supported = request.controls.steering != "unsupported"
        self.response_id: Optional[str] = None
        self.channel: Optional[EventChannel] = None
        # None until the terminal: "completed", "incomplete", "failed" or "errored".
        self.status: Optional[str] = None
        # Accepting from response.created until the session settled the queued steers.
        self.accepting = False
        # Completed with client-owned tool calls and queued steers: they wait for the next
        # explicit create continuing from this response on its lane.
        self.awaiting_input = False
        self.steers: list[Steer] = []
        self.calls: list[tuple[str, str]] = []  # (call_id, name) of its function calls
        self.chain: Optional[Chain] = None
        self._wake = asyncio.Event()

    # -- what serve() reports ------------------------------------------------------------------

    def bind(self, response_id: str, channel: EventChannel) -> None:
        """The response has its id (not public until ``response.created``)."""
        self.response_id = response_id
        self.channel = channel
        self.registry.add(self)

    def refuse_all(self) -> None:
        """A hostile preset's response: its frames break the protocol, steering is off."""
        self.supported = False

    def activate(self) -> None:
        """``response.created`` is being sent: steers are accepted from now on."""
        self.accepting = True

    def ended(
        self,
        status: str,
        *,
        chain: Optional[Chain] = None,
        output: Optional[list[dict[str, Any]]] = None,
    ) -> None:
        self.status = status
        self.chain = chain
        self.calls = [
            (str(item.get("call_id")), str(item.get("name")))
            for item in output or []
            if item.get("type") == "function_call"
        ]
        if status == "errored":
            self.accepting = False

    def should_stop(self) -> bool:
        """A steer is queued: stop at this text delta boundary."""
        return bool(self.steers)

    async def pause(self, delay: float) -> None:
        """Sleep before a delta, waking at once when a steer is accepted."""
        if self.steers:
            return
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    # -- what a steer meets --------------------------------------------------------------------

    def refusal(self) -> Optional[tuple[str, str]]:
        """(code, message) when this steer cannot be accepted now; None to accept it."""
        rid = self.response_id
        if not self.supported:
            return (
                "steering_not_supported",
                f"Response '{rid}' does not support steering (emulator_steering=unsupported).",
            )
        if self.accepting:
            if len(self.steers) >= MAX_PENDING_STEERS:
                return (
                    "too_many_pending_steers",
                    f"Too much steering input is pending for response '{rid}': at most"
                    f" {MAX_PENDING_STEERS} accepted submissions wait for their successor.",
                )
            return None
        if self.status == "completed":
            return (
                "response_already_completed",
                f"Response '{rid}' has already completed and no longer accepts steering input.",
            )
        return (
            "response_not_active",
            f"Response '{rid}' is not active: it has not started, or it ended without completing"
            " (or its successor already started).",
        )

    def accept(self, steer: Steer) -> None:
        self.steers.append(steer)
        self._wake.set()

    def pending_event(self, steer: Steer) -> dict[str, Any]:
        return {
            "type": "response.steer.pending",
            "steer": steer.ref(),
            "reason": "waiting_for_required_input",
            "required_input": [
                {"type": "function_call_output", "call_id": call_id, "name": name}
                for call_id, name in self.calls
            ],
        }

    # -- after the terminal event --------------------------------------------------------------

    async def settle(self) -> Optional[tuple[CreateRequest, Chain]]:
        """Answer the queued steers once the terminal event is out.

        Returns the successor to run (with the chain it continues), or None.
        """
        channel = self.channel
        if not self.steers or channel is None:
            self.accepting = False
            return None
        if self.calls and self.status == "completed":
            # Client-owned tool calls: the input waits for the client's explicit create.
            self.awaiting_input = True
            for steer in list(self.steers):
                self.registry.stats_add("steers_pending")
                await channel.side_event(self.pending_event(steer))
            return None
        successor_fails = self.request.controls.steering == "successor_fails"
        if successor_fails or self.chain is None or self.response_id is None:
            reason = (
                "emulator_steering=successor_fails"
                if successor_fails
                else f"response '{self.response_id}' {self.status}"
            )
            while self.steers:  # steers accepted while these are sent are failed too
                steer = self.steers.pop(0)
                self.registry.stats_add("steers_failed")
                await channel.side_event(
                    failed_event(
                        steer,
                        "successor_creation_failed",
                        f"The successor response could not be created ({reason}).",
                    )
                )
            self.accepting = False
            return None
        steers, self.steers = self.steers, []
        self.accepting = False
        return successor_request(self.request, self.response_id, steers), self.chain

    def claim(self) -> list[dict[str, Any]]:
        """The queued input, for the explicit create that continues this response."""
        items = [item for steer in self.steers for item in steer.items]
        self.steers = []
        self.awaiting_input = False
        self.accepting = False
        return items


def successor_request(
    request: CreateRequest, previous_response_id: str, steers: list[Steer]
) -> CreateRequest:
    """The automatic successor: every setting inherited, the steer input as its input."""
    items = [dict(item) for steer in steers for item in steer.items]
    body = {k: v for k, v in request.body.items() if k != "generate"}
    body.update(previous_response_id=previous_response_id, input=items)
    return dataclasses.replace(
        request,
        body=body,
        input_items=items,
        new_context=normalize_input(items),
        previous_response_id=previous_response_id,
        generate=True,
    )


def with_claimed_input(request: CreateRequest, items: list[dict[str, Any]]) -> CreateRequest:
    """``request`` with the queued steer input prepended (submission order)."""
    if not items:
        return request
    copied = [dict(item) for item in items]
    return dataclasses.replace(
        request,
        input_items=[*copied, *request.input_items],
        new_context=[*normalize_input(copied), *request.new_context],
    )


class SteeringRegistry:
    """The responses of one connection that a steer can name (the newest ``TARGETS_KEPT``)."""

    def __init__(self, stats_add: Callable[[str], None]) -> None:
        self.stats_add = stats_add
        self._by_id: OrderedDict[str, SteerTarget] = OrderedDict()

    def track(self, request: CreateRequest) -> SteerTarget:
        return SteerTarget(self, request)

    def add(self, target: SteerTarget) -> None:
        assert target.response_id is not None
        self._by_id[target.response_id] = target
        while len(self._by_id) > TARGETS_KEPT:
            self._by_id.popitem(last=False)

    def find(self, response_id: str) -> Optional[SteerTarget]:
        return self._by_id.get(response_id)

    def claim_for(self, request: CreateRequest) -> CreateRequest:
        """Prepend the input that waits on ``request``'s previous response, when ``request``
        continues it on the same lane; that input is consumed."""
        previous = request.previous_response_id
        target = self._by_id.get(previous) if previous is not None else None
        if target is None or not target.awaiting_input or target.stream_id != request.stream_id:
            return request
        return with_claimed_input(request, target.claim())

    def clear(self) -> None:
        self._by_id.clear()
