"""Serving one request: faults, the cache/store lookup, the model, pacing and the events.

Transport-neutral: the WebSocket session and the HTTP handlers hand it a :class:`Sink` that
knows how to put an event, an error or a broken frame on their wire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Protocol

from ._faults import Fault, FaultQueue, error_code_for_status
from ._hostile import HostilePreset, JsonEvent, PresetFrame, TextFrame, WireFrame, hostile_preset
from ._model import (
    CallPlan,
    Item,
    TextPlan,
    context_size,
    normalize_item,
    plan_response,
)
from ._options import EmulatorOptions
from ._ratelimit import RateLimiter, rate_limit_tokens, retry_after_headers
from ._requests import Controls, CreateRequest, RequestError, new_id
from ._responses import (
    finish,
    function_call_item,
    message_item,
    response_object,
    text_part,
    usage,
)
from ._state import Chain, ConnectionCache, ResponseStore
from ._stats import Stats
from ._steering import SteerTarget

if TYPE_CHECKING:
    from ._background import BackgroundRuns

logger = logging.getLogger("oaiws.testing")


class ConnectionAborted(Exception):
    """The transport is gone (closed by a fault, the client or the server): stop serving."""


class Sink(Protocol):
    @property
    def websocket(self) -> bool:
        """Whether the transport has WebSocket frames (for the WebSocket-only hostile presets)."""

    async def accepted(self) -> None:
        """The request passed its checks: a streaming HTTP answer sends its status and headers
        now, as the service does long before the first event; other sinks do nothing."""

    async def send_event(self, event: dict[str, Any]) -> None: ...

    async def send_error(self, error: RequestError, sequence_number: int) -> None: ...

    async def send_malformed(self) -> None: ...

    async def send_binary(self) -> None: ...

    async def send_hostile(self, frame: WireFrame) -> None:
        """Put a hostile preset's frame on the wire exactly as given (counted in
        ``hostile_frames_sent``)."""

    async def abort(self, close_code: Optional[int]) -> None:
        """Close the transport (no close frame when ``close_code`` is None) and raise
        :class:`ConnectionAborted`."""


ARRIVALS_KEPT = 100_000


@dataclass
class Switches:
    """What may change while the emulator runs: read at each request, set from any thread
    (one attribute assignment each, so a reader never sees half a change)."""

    # None: WebSocket mode on; else every upgrade is answered with this HTTP status.
    websocket_status: Optional[int] = None


@dataclass
class ServerContext:
    """What every connection and request shares."""

    options: EmulatorOptions
    stats: Stats
    faults: FaultQueue
    store: ResponseStore
    background: BackgroundRuns
    switches: Switches = field(default_factory=Switches)
    limits: RateLimiter = field(default_factory=lambda: RateLimiter(None, None, 1.0))
    # When each response.create arrived (time.monotonic()), for tests of pacing.
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=ARRIVALS_KEPT))


def fault_error(fault: Fault) -> RequestError:
    status = fault.error_status_code()
    code = fault.error_code or error_code_for_status(status)
    if status >= 500:
        kind, message = "server_error", "The server had an error while processing your request."
    elif status == 429:
        kind, message = "requests", "Rate limit reached. Please try again later."
    else:
        kind, message = "invalid_request_error", f"The request failed ({code})."
    headers = (
        {"retry-after": _seconds(fault.retry_after)} if fault.retry_after is not None else None
    )
    return RequestError(message, status=status, type=kind, code=code, param=None, headers=headers)


def _admit(ctx: ServerContext, request: CreateRequest) -> None:
    """Charge the request to the rate limits, or refuse it with 429 (see ``_ratelimit``)."""
    limits = ctx.limits
    if not limits.enabled:
        return
    tokens = rate_limit_tokens(request)
    wait = limits.admit(tokens)
    if wait is None:
        ctx.stats.add("rate_limit_tokens", tokens)
        return
    ctx.stats.add("rate_limited")
    raise RequestError(
        "Rate limit reached for requests or tokens per minute. Please try again later.",
        status=429,
        type="requests",
        code="rate_limit_exceeded",
        param=None,
        headers=retry_after_headers(wait),
    )


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class _Emitter:
    """Numbers the events of one response and applies a fault's frame-level effects."""

    def __init__(self, sink: Sink, fault: Optional[Fault], stream_id: Optional[str]) -> None:
        self.sink = sink
        self.fault = fault
        self.stream_id = stream_id
        self.sent = 0
        self.sequence = 0

    async def start(self) -> None:
        fault = self.fault
        if fault is None:
            return
        if fault.handshake_delay:
            await asyncio.sleep(fault.handshake_delay)
        if fault.close_after_events == 0:
            await self.sink.abort(fault.close_code)

    async def event(self, payload: dict[str, Any]) -> None:
        fault = self.fault
        first = self.sent == 0
        if first and fault is not None and fault.stall_before_first_event:
            await asyncio.sleep(fault.stall_before_first_event)
        payload["sequence_number"] = self.sequence
        self.sequence += 1
        if self.stream_id is not None:
            payload["stream_id"] = self.stream_id
        if first and fault is not None and fault.malformed_frame:
            await self.sink.send_malformed()
        elif first and fault is not None and fault.binary_frame:
            await self.sink.send_binary()
        else:
            await self.sink.send_event(payload)
        await self._sent(first)

    async def side_event(self, payload: dict[str, Any]) -> None:
        """An event of the response's sequence that is not part of its generation (the
        ``response.steer.*`` answers): numbered and tagged like the others, no fault effects."""
        payload["sequence_number"] = self.sequence
        self.sequence += 1
        if self.stream_id is not None:
            payload["stream_id"] = self.stream_id
        await self.sink.send_event(payload)

    async def hostile(self, frame: PresetFrame) -> None:
        """Send one frame of a hostile preset. A JSON object is numbered like any event (the
        numbering stays monotonic); nothing else about it is touched."""
        if isinstance(frame, JsonEvent):
            wire: WireFrame = TextFrame(
                frame.render(self.sequence, self.stream_id), frame.sse_event
            )
            self.sequence += 1
        else:
            wire = frame
        await self.sink.send_hostile(wire)
        await self._sent(first=False)

    async def _sent(self, first: bool) -> None:
        self.sent += 1
        fault = self.fault
        if fault is None:
            return
        if first and fault.stall_after_first_event:
            await asyncio.sleep(fault.stall_after_first_event)
        if fault.close_after_events is not None and self.sent >= fault.close_after_events:
            await self.sink.abort(fault.close_code)

    async def error(self, error: RequestError) -> None:
        await self.sink.send_error(error, self.sequence)
        self.sequence += 1


async def serve(
    ctx: ServerContext,
    request: CreateRequest,
    sink: Sink,
    *,
    cache: Optional[ConnectionCache],
    fault: Optional[Fault],
    response_id: Optional[str] = None,
    created_at: Optional[int] = None,
    steering: Optional[SteerTarget] = None,
    successor_of: Optional[Chain] = None,
) -> None:
    """Serve ``request`` to its end (a terminal event or an error) on ``sink``.

    A background request (whose id and creation time were given out already) starts with
    ``response.created`` and ``response.queued`` at once; the delays and the context's cost
    are its time in the queue, then it goes ``response.in_progress``.

    ``steering`` (WebSocket only) follows the response for ``response.steer``; a steer it
    accepted stops a text response at its next delta boundary. ``successor_of`` is the chain
    of the steered response when this is its automatic successor: not a client request, so it
    is neither an arrival nor charged to the rate limits, and it continues that chain directly.
    """
    if successor_of is None:
        ctx.arrivals.append(time.monotonic())
    fault = request.controls.fault or fault
    if fault is not None:
        ctx.stats.add("faults_applied")
    emitter = _Emitter(sink, fault, request.stream_id)
    await emitter.start()
    response_id = response_id or new_id("resp")
    created_at = int(time.time()) if created_at is None else created_at
    if steering is not None:
        steering.bind(response_id, emitter)
    if request.background:
        queued = response_object(request, response_id, created_at, status="queued")
        await emitter.event({"type": "response.created", "response": queued})
        await emitter.event({"type": "response.queued", "response": queued})
    previous = request.previous_response_id
    try:
        if fault is not None and (fault.error_code is not None or fault.refuse_status is not None):
            raise fault_error(fault)
        preset = _hostile_preset(fault, sink)
        if successor_of is None:
            _admit(ctx, request)
            prior, cached_bytes, processed = await _resolve_previous(ctx, request, cache)
        else:
            prior, cached_bytes = successor_of.context, successor_of.size
            processed = context_size(request.new_context)
    except RequestError as error:
        if previous is not None and cache is not None:
            cache.evict(previous, request.stream_id)
        if steering is not None:
            steering.ended("errored")
        await emitter.error(error)
        return
    await sink.accepted()

    if ctx.options.input_cost_per_kb and processed:
        # Reading context costs time in proportion to its size: this is what makes a full
        # replay measurably slower than a continuation from the connection's cache.
        await asyncio.sleep(ctx.options.input_cost_per_kb * processed / 1024.0)
    ctx.stats.add("input_kb_processed", processed / 1024.0)

    context = (*prior, *request.new_context)
    input_bytes = context_size(context) + len((request.instructions or "").encode())
    response = response_object(request, response_id, created_at)
    controls = request.controls
    if controls.first_event_delay:
        await asyncio.sleep(controls.first_event_delay)

    if preset is not None:
        if steering is not None:
            steering.refuse_all()
        await _serve_hostile(
            ctx,
            request,
            emitter,
            preset,
            cache=cache,
            response=response,
            context=context,
            used=usage(input_bytes, cached_bytes, 0),
        )
        return

    if not request.generate:
        # Warm-up: state is prepared and the id can be chained from, but nothing is generated.
        done = finish(
            response, status="completed", output=[], usage=usage(input_bytes, cached_bytes, 0)
        )
        if not request.background:
            if steering is not None:
                steering.activate()
            await emitter.event({"type": "response.created", "response": response})
        # Stored before the client can read the terminal event, as the service does: the next
        # turn, sent the moment it arrives (from any process), finds it.
        chain = _remember(ctx, request, cache, done, context)
        if steering is not None:
            steering.ended("completed", chain=chain, output=[])
        await emitter.event({"type": "response.completed", "response": done})
        ctx.stats.add("warmups")
        ctx.stats.add("responses_completed")
        return

    if not request.background:
        if steering is not None:
            steering.activate()
        await emitter.event({"type": "response.created", "response": response})
    await emitter.event({"type": "response.in_progress", "response": response})
    if controls.outcome == "failed":
        reported = {
            "code": "server_error",
            "message": "The model failed to generate a response (emulator_outcome=failed).",
        }
        failed = finish(
            response,
            status="failed",
            output=[],
            usage=usage(input_bytes, cached_bytes, 0),
            error=reported,
        )
        if steering is not None:
            steering.ended("failed")
        await emitter.event({"type": "response.failed", "response": failed})
        if previous is not None and cache is not None:
            # A failed continuation evicts the id it continued from (on its own lane).
            cache.evict(previous, request.stream_id)
        ctx.stats.add("responses_failed")
        return

    plan = plan_response(
        context,
        instructions=request.instructions,
        tools=request.tools,
        tool_choice=request.tool_choice,
        deltas=controls.deltas,
    )
    chunks = plan.chunks
    limit = len(chunks)
    reason: Optional[str] = None
    if controls.outcome == "incomplete":
        limit, reason = (len(chunks) + 1) // 2, controls.incomplete_reason
    if request.max_output_tokens is not None and request.max_output_tokens < limit:
        limit, reason = request.max_output_tokens, "max_output_tokens"

    if isinstance(plan, TextPlan):
        item, sent = await _stream_text(
            emitter, chunks[:limit], controls, cut_short=bool(reason), steering=steering
        )
        if sent < limit:  # stopped at a delta boundary by an accepted steer
            limit, reason = sent, "steered"
    else:
        item_status = "incomplete" if reason else "completed"
        item = await _stream_call(
            emitter, plan, chunks[:limit], controls, item_status, steering=steering
        )
    status = "incomplete" if reason else "completed"
    done = finish(
        response,
        status=status,
        output=[item],
        usage=usage(input_bytes, cached_bytes, limit),
        incomplete_reason=reason,
    )
    chain = _remember(ctx, request, cache, done, context)  # before the client can read it
    if steering is not None:
        steering.ended(status, chain=chain, output=done["output"])
    await emitter.event({"type": f"response.{status}", "response": done})
    ctx.stats.add("responses_incomplete" if reason else "responses_completed")


def _hostile_preset(fault: Optional[Fault], sink: Sink) -> Optional[HostilePreset]:
    """The fault's hostile preset, or a 400 when it needs WebSocket framing the sink lacks."""
    if fault is None or fault.hostile_frame is None:
        return None
    preset = hostile_preset(fault.hostile_frame)
    if preset.websocket_only and not sink.websocket:
        raise RequestError(
            f"The hostile frame preset '{fault.hostile_frame}' exists only over WebSocket: it"
            " breaks WebSocket framing, which HTTP does not have.",
            code="invalid_value",
            param=None,
        )
    return preset


async def _serve_hostile(
    ctx: ServerContext,
    request: CreateRequest,
    emitter: _Emitter,
    preset: HostilePreset,
    *,
    cache: Optional[ConnectionCache],
    response: dict[str, Any],
    context: tuple[Item, ...],
    used: dict[str, Any],
) -> None:
    """The real ``response.created``, the preset's frames, then the terminal event.

    The normal deltas are never sent and the terminal's output is empty, so a tolerant client
    must assemble the output from the events it did receive.
    """
    await emitter.event({"type": "response.created", "response": response})
    for frame in preset.frames(response["id"]):
        await emitter.hostile(frame)
    if preset.endless:
        # The wire is left inside a frame or a message: nothing sent now could be read as an
        # event, so the request ends here and the client is expected to close.
        return
    done = finish(response, status="completed", output=[], usage=used)
    if preset.terminal is None:
        _remember(ctx, request, cache, done, context)
        await emitter.event({"type": "response.completed", "response": done})
        ctx.stats.add("responses_completed")
        return
    terminal = preset.terminal(done)
    await emitter.hostile(terminal)
    if terminal.fields.get("type") == "response.completed":
        # The server considers it completed, so a tolerant client may continue from it.
        _remember(ctx, request, cache, done, context)


async def _resolve_previous(
    ctx: ServerContext, request: CreateRequest, cache: Optional[ConnectionCache]
) -> tuple[tuple[Item, ...], int, int]:
    """(prior context, bytes served from cache, bytes the server must process)."""
    new_bytes = context_size(request.new_context)
    previous = request.previous_response_id
    if previous is None:
        return (), 0, new_bytes
    chain = cache.lookup(previous) if cache is not None else None
    if chain is not None:
        ctx.stats.add("cache_hits")
        return chain.context, chain.size, new_bytes
    ctx.stats.add("cache_misses")
    stored = ctx.store.chain(previous)
    if stored is None:
        ctx.stats.add("previous_response_not_found")
        raise previous_not_found(previous)
    if ctx.options.hydration_delay:
        await asyncio.sleep(ctx.options.hydration_delay)
    ctx.stats.add("hydrations")
    return stored.context, 0, stored.size + new_bytes


def previous_not_found(previous: str) -> RequestError:
    return RequestError(
        f"Previous response with id '{previous}' not found.",
        code="previous_response_not_found",
        param="previous_response_id",
    )


def _remember(
    ctx: ServerContext,
    request: CreateRequest,
    cache: Optional[ConnectionCache],
    response: dict[str, Any],
    context: tuple[Item, ...],
) -> Chain:
    outputs = (normalize_item(item) for item in response["output"])
    chain = Chain(response["id"], (*context, *(item for item in outputs if item is not None)))
    if cache is not None:
        cache.remember(request.stream_id, chain)
    if request.store:
        ctx.store.put(response, chain, request.input_items)
    return chain


async def _finishing(controls: Controls, steering: Optional[SteerTarget]) -> None:
    """``emulator_finish_delay_ms``: the wait between the last delta and the end of the
    output, cut short by an accepted steer (it cannot stop the output any more)."""
    if not controls.finish_delay:
        return
    if steering is not None:
        await steering.pause(controls.finish_delay)
    else:
        await asyncio.sleep(controls.finish_delay)


async def _stream_text(
    emitter: _Emitter,
    chunks: tuple[str, ...],
    controls: Controls,
    *,
    cut_short: bool,
    steering: Optional[SteerTarget],
) -> tuple[dict[str, Any], int]:
    """The message item and how many deltas were sent: all of them, unless an accepted steer
    stopped the text at a delta boundary (the item is then closed with the text so far)."""
    delay = controls.delta_delay
    item_id = new_id("msg")
    base = {"item_id": item_id, "output_index": 0, "content_index": 0}
    await emitter.event(
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": message_item(item_id, "in_progress", []),
        }
    )
    await emitter.event({"type": "response.content_part.added", **base, "part": text_part("")})
    sent: list[str] = []
    for chunk in chunks:
        if steering is not None:
            if delay:
                await steering.pause(delay)  # a steer accepted meanwhile wakes it at once
            if steering.should_stop():
                break
        elif delay:
            await asyncio.sleep(delay)
        await emitter.event(
            {"type": "response.output_text.delta", **base, "delta": chunk, "logprobs": []}
        )
        sent.append(chunk)
    if len(sent) == len(chunks):
        await _finishing(controls, steering)
    text = "".join(sent)
    status = "incomplete" if cut_short or len(sent) < len(chunks) else "completed"
    await emitter.event({"type": "response.output_text.done", **base, "text": text, "logprobs": []})
    await emitter.event({"type": "response.content_part.done", **base, "part": text_part(text)})
    item = message_item(item_id, status, [text_part(text)])
    await emitter.event({"type": "response.output_item.done", "output_index": 0, "item": item})
    return item, len(sent)


async def _stream_call(
    emitter: _Emitter,
    plan: CallPlan,
    chunks: tuple[str, ...],
    controls: Controls,
    status: str,
    *,
    steering: Optional[SteerTarget],
) -> dict[str, Any]:
    """A function call: steering never cuts it (the client owns its output)."""
    delay = controls.delta_delay
    item_id, call_id = new_id("fc"), new_id("call")
    await emitter.event(
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": function_call_item(item_id, call_id, plan.name, "", "in_progress"),
        }
    )
    for chunk in chunks:
        if delay:
            await asyncio.sleep(delay)
        await emitter.event(
            {
                "type": "response.function_call_arguments.delta",
                "item_id": item_id,
                "output_index": 0,
                "delta": chunk,
            }
        )
    await _finishing(controls, steering)
    arguments = "".join(chunks)
    await emitter.event(
        {
            "type": "response.function_call_arguments.done",
            "item_id": item_id,
            "output_index": 0,
            "name": plan.name,
            "arguments": arguments,
        }
    )
    item = function_call_item(item_id, call_id, plan.name, arguments, status)
    await emitter.event({"type": "response.output_item.done", "output_index": 0, "item": item})
    return item
