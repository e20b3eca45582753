"""One WebSocket connection: frames in, lanes of queued responses, timers, frames out."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Optional

from aiohttp import WSMsgType, web

from ._engine import ConnectionAborted, ServerContext, serve
from ._faults import Fault
from ._hostile import OPCODE_TEXT, FragmentFlood, RawFrame, TextFrame, WireFrame
from ._requests import STREAM_ID_PATTERN, CreateRequest, RequestError, parse_create
from ._state import ConnectionCache
from ._steering import (
    SteeringRegistry,
    SteerInvalid,
    SteerTarget,
    failed_event,
    new_steer,
    steer_input_items,
    steer_target_id,
)

logger = logging.getLogger("oaiws.testing")

# Limits of the real service's lanes (PROTOCOL.md section 4).
MAX_ACTIVE_RESPONSES = 16
MAX_NAMED_LANES = 32
# How long a server-initiated close waits for the client's close frame before dropping TCP.
CLOSE_HANDSHAKE_TIMEOUT = 2.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class _Lane:
    # (arrival ticket, request, fault), oldest first.
    queue: deque[tuple[int, CreateRequest, Optional[Fault]]] = field(default_factory=deque)
    worker: Optional[asyncio.Task[None]] = None


class _Admission:
    """At most ``limit`` responses generated at once; waiting creates start in arrival order.

    A semaphore would let a lane that just finished a response queue its next create behind
    creates of other lanes that arrived after it; here every waiter carries its arrival ticket
    and a freed slot goes to the oldest.
    """

    def __init__(self, limit: int) -> None:
        self.free = limit
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []

    def _oldest_waiting(self) -> Optional[int]:
        while self._waiting and self._waiting[0][1].done():  # cancelled waiters
            heapq.heappop(self._waiting)
        return self._waiting[0][0] if self._waiting else None

    async def acquire(self, ticket: int) -> None:
        if self.free > 0 and self._oldest_waiting() is None:
            self.free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (ticket, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # handed over just as the wait was cancelled: pass it on
            raise

    def keep_for(self, ticket: int) -> bool:
        """Whether the holder of a slot may keep it for its next create (``ticket``): yes
        unless an older create waits for one."""
        oldest = self._oldest_waiting()
        return oldest is None or ticket < oldest

    def release(self) -> None:
        if self._oldest_waiting() is not None:
            _, granted = heapq.heappop(self._waiting)
            granted.set_result(None)  # the slot passes straight to the oldest waiter
        else:
            self.free += 1


class WebSocketSession:
    """Serves one upgraded connection until either side closes it."""

    def __init__(
        self,
        ctx: ServerContext,
        request: web.Request,
        ws: web.WebSocketResponse,
        *,
        default_model: Optional[str],
        connection_fault: Optional[Fault],
    ) -> None:
        self.ctx = ctx
        self.request = request
        self.ws = ws
        self.default_model = default_model
        self.connection_fault = (
            connection_fault if connection_fault and connection_fault.acts_on_request else None
        )
        self.cache = ConnectionCache()
        self.created_at = time.monotonic()
        self.last_activity = self.created_at
        self.lanes: dict[Optional[str], _Lane] = {}
        self.named_lanes: set[str] = set()
        self.tickets = itertools.count()
        self.send_lock = asyncio.Lock()
        # At most this many responses are generated at once; further creates wait their turn.
        self.active = _Admission(MAX_ACTIVE_RESPONSES)
        self.steering = SteeringRegistry(self.ctx.stats.add)
        self.closing = False
        # Set once a hostile raw frame left the wire inside a message or a frame: a data frame
        # sent after it could never be read as one, so none is sent (control frames still are).
        self.wire_broken = False
        self.close_request: Optional[tuple[int, str]] = None
        self.reader: Optional[asyncio.Task[None]] = None
        self.ping_sent_at: Optional[float] = None
        self.last_ping_at = self.created_at

    # -- life --------------------------------------------------------------------------------

    async def run(self) -> None:
        watchdog = asyncio.ensure_future(self._watchdog())
        self.reader = asyncio.ensure_future(self._receive_loop())
        try:
            # Waiting (rather than awaiting the reader) keeps a cancellation of the reader by
            # close_soon() apart from a cancellation of this handler at shutdown.
            await asyncio.wait([self.reader])
            if self.close_request is not None:
                code, reason = self.close_request
                await self._close(code, reason)
        finally:
            self.reader.cancel()
            watchdog.cancel()
            for lane in self.lanes.values():
                if lane.worker is not None:
                    lane.worker.cancel()
            workers = [lane.worker for lane in self.lanes.values() if lane.worker is not None]
            await asyncio.gather(watchdog, *workers, return_exceptions=True)
            self.cache.clear()  # the cache dies with the connection
            self.steering.clear()

    def close_soon(self, code: Optional[int], reason: str = "") -> None:
        """Close from any task of the loop without waiting (code None: drop TCP, no frame)."""
        if self.closing:
            return
        self.closing = True
        if code is None:
            self.abort()
            return
        # The close handshake runs in the handler once the reader stops, so that the reader
        # and close() never compete for frames and the client's close reply is awaited.
        self.close_request = (code, reason)
        if self.reader is not None:
            self.reader.cancel()

    def abort(self) -> None:
        """Drop TCP at once, with no close frame."""
        self.closing = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code=code, message=reason.encode())
        except Exception:  # the peer vanished mid-close: nothing left to tell it
            logger.debug("close(%s) failed", code, exc_info=True)

    async def _receive_loop(self) -> None:
        stats = self.ctx.stats
        while True:
            message = await self.ws.receive()
            kind = message.type
            if kind in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            self.last_activity = time.monotonic()
            if kind == WSMsgType.PING:
                stats.add("pings_received")
                await self._guarded(self.ws.pong(message.data))
            elif kind == WSMsgType.PONG:
                stats.add("pongs_received")
                self.ping_sent_at = None
            elif kind == WSMsgType.TEXT:
                stats.add("bytes_received", len(message.data.encode()))
                await self._handle_text(message.data)
            elif kind == WSMsgType.BINARY:
                stats.add("bytes_received", len(message.data))
                await self._send_error(
                    RequestError(
                        "Binary frames are not supported: send JSON text frames.",
                        code="invalid_frame",
                        param=None,
                    )
                )

    async def _watchdog(self) -> None:
        """Maximum age, idle timeout and server pings, each at its own deadline."""
        options = self.ctx.options
        while not self.closing:
            now = time.monotonic()
            deadlines = [self.created_at + options.max_connection_age]
            if now >= deadlines[0]:
                self.ctx.stats.add("connections_closed_max_age")
                # The limit cuts in even mid-response: the real service does not promise to
                # finish one, so a client must rotate before the limit (docs/emulator.md).
                await self._send_error(
                    RequestError(
                        "Responses websocket connection limit reached (60 minutes). Create a new"
                        " websocket connection to continue.",
                        code="websocket_connection_limit_reached",
                        param=None,
                    )
                )
                self.close_soon(1001, "connection limit reached")
                return
            if options.idle_timeout is not None:
                if self._busy_lanes():
                    self.last_activity = now
                idle_deadline = self.last_activity + options.idle_timeout
                if now >= idle_deadline:
                    self.ctx.stats.add("connections_closed_idle")
                    self.close_soon(1001, "idle timeout")
                    return
                deadlines.append(idle_deadline)
            if options.ping_interval is not None:
                if self.ping_sent_at is not None:
                    pong_deadline = self.ping_sent_at + options.ping_timeout
                    if now >= pong_deadline:
                        self.ctx.stats.add("connections_closed_ping_timeout")
                        self.close_soon(1011, "keepalive ping timeout")
                        return
                    deadlines.append(pong_deadline)
                else:
                    due = self.last_ping_at + options.ping_interval
                    if now >= due:
                        self.last_ping_at = self.ping_sent_at = now
                        self.ctx.stats.add("pings_sent")
                        await self._guarded(self.ws.ping(b"oaiws-emulator"))
                        continue
                    deadlines.append(due)
            await asyncio.sleep(max(min(deadlines) - now, 0.001))

    # -- client events -----------------------------------------------------------------------

    async def _handle_text(self, text: str) -> None:
        try:
            payload = json.loads(text)
        except ValueError:
            await self._send_error(
                RequestError(
                    "We could not parse the JSON body of your request: send one JSON object per"
                    " text frame.",
                    code="invalid_json",
                    param=None,
                )
            )
            return
        if not isinstance(payload, dict):
            await self._send_error(
                RequestError(
                    "Invalid client event: expected a JSON object with a 'type'.",
                    code="invalid_type",
                    param="type",
                )
            )
            return
        raw_stream_id = payload.get("stream_id")
        echo = (
            raw_stream_id
            if self.ctx.options.lanes == "on"
            and isinstance(raw_stream_id, str)
            and STREAM_ID_PATTERN.fullmatch(raw_stream_id)
            else None
        )
        kind = payload.get("type")
        if kind == "response.create":
            await self._create(payload, echo)
            return
        if kind == "response.steer":
            with contextlib.suppress(ConnectionAborted):  # the socket is gone: nobody to tell
                await self._steer(payload)
            return
        error = RequestError(
            f"Invalid value: {kind!r}. Supported values are: 'response.create', 'response.steer'.",
            code="invalid_value",
            param="type",
        )
        await self._send_error(error, echo)

    async def _create(self, payload: dict[str, Any], echo: Optional[str]) -> None:
        self.ctx.stats.add("requests")
        options = self.ctx.options
        if options.lanes == "ignore":
            # A server without lanes (Azure, xAI): the field is accepted and means nothing.
            payload = {k: v for k, v in payload.items() if k != "stream_id"}
        elif options.lanes == "refuse" and "stream_id" in payload:
            await self._send_error(
                RequestError(
                    "Unknown parameter: 'stream_id'. This server does not support WebSocket"
                    " streams (lanes): send one response at a time per connection.",
                    code="invalid_stream_id",
                    param="stream_id",
                )
            )
            return
        try:
            request = parse_create(
                payload,
                websocket=True,
                default_model=self.default_model,
                deltas=options.deltas,
                delta_delay=options.delta_delay,
                first_event_delay=options.first_event_delay,
            )
            lane = request.stream_id
            if (
                lane is not None
                and lane not in self.named_lanes
                and len(self.named_lanes) >= MAX_NAMED_LANES
            ):
                raise RequestError(
                    f"Too many streams: at most {MAX_NAMED_LANES} distinct stream_id values per"
                    " connection.",
                    code="websocket_stream_limit_reached",
                    param="stream_id",
                )
        except RequestError as error:
            await self._send_error(error, echo)
            return
        if lane is not None:
            self.named_lanes.add(lane)
        # A connection fault's request fields apply to the first request on the connection;
        # a fault in the request's metadata replaces a queued one without consuming it.
        fault, self.connection_fault = self.connection_fault, None
        if fault is None and request.controls.fault is None:
            fault = self.ctx.faults.take("request")
        state = self.lanes.setdefault(lane, _Lane())
        state.queue.append((next(self.tickets), request, fault))
        if state.worker is None:
            state.worker = asyncio.ensure_future(self._lane_worker(lane, state))

    def _busy_lanes(self) -> set[Optional[str]]:
        return {name for name, lane in self.lanes.items() if lane.worker is not None}

    async def _lane_worker(self, name: Optional[str], lane: _Lane) -> None:
        """Serve one lane's requests in arrival order: one response at a time per lane."""
        holding = False
        try:
            while lane.queue and not self.closing:
                ticket, request, fault = lane.queue.popleft()
                if not holding:
                    await self.active.acquire(ticket)
                    holding = True
                # Steer input waiting on the response this one continues joins its input.
                request = self.steering.claim_for(request)
                await self._serve_with_successors(request, fault)
                self.last_activity = time.monotonic()
                if not (lane.queue and self.active.keep_for(lane.queue[0][0])):
                    holding = False
                    self.active.release()
        except ConnectionAborted:
            pass
        except Exception:  # a bug must cost one connection, never the server
            logger.exception("serving a response failed; closing the connection")
            self.close_soon(1011, "internal error")
        finally:
            if holding:
                self.active.release()
            lane.worker = None
            if not lane.queue:
                self.lanes.pop(name, None)

    async def _serve_with_successors(self, request: CreateRequest, fault: Optional[Fault]) -> None:
        """One response, then the automatic successors its accepted steers call for: on the
        same lane, in the same active slot."""
        target = self.steering.track(request)
        sink = _WebSocketSink(self, request.stream_id)
        await serve(self.ctx, request, sink, cache=self.cache, fault=fault, steering=target)
        while True:
            successor = await target.settle()
            if successor is None:
                return
            request, chain = successor
            self.ctx.stats.add("successors")
            target = self.steering.track(request)
            await serve(
                self.ctx,
                request,
                sink,
                cache=self.cache,
                fault=None,
                steering=target,
                successor_of=chain,
            )

    async def _steer(self, payload: dict[str, Any]) -> None:
        """Answer one ``response.steer`` (docs/emulator.md, "Steering")."""
        stats = self.ctx.stats
        stats.add("steers_received")
        try:
            previous = steer_target_id(payload)
        except RequestError as error:
            await self._send_error(error)
            return
        target = self.steering.find(previous)
        steer = new_steer(previous, payload)
        try:
            steer.items = steer_input_items(payload)
        except SteerInvalid as invalid:
            await self._steer_failed(target, failed_event(steer, "invalid_input", str(invalid)))
            return
        if target is None:
            await self._steer_failed(
                None,
                failed_event(
                    steer,
                    "response_not_found",
                    f"Response with id '{previous}' is not available on this connection.",
                ),
            )
            return
        refusal = target.refusal()
        if refusal is not None:
            await self._steer_failed(target, failed_event(steer, *refusal))
            return
        target.accept(steer)
        channel = target.channel
        assert channel is not None  # a target can be found only once it has an id
        stats.add("steers_accepted")
        await channel.side_event({"type": "response.steer.accepted", "steer": steer.ref()})
        if target.awaiting_input:
            stats.add("steers_pending")
            await channel.side_event(target.pending_event(steer))

    async def _steer_failed(self, target: Optional[SteerTarget], event: dict[str, Any]) -> None:
        self.ctx.stats.add("steers_failed")
        if target is not None and target.channel is not None:
            await target.channel.side_event(event)  # in the target's sequence, on its lane
        else:
            event["sequence_number"] = 0
            await _WebSocketSink(self, None).send_event(event)

    # -- sending -----------------------------------------------------------------------------

    async def _guarded(self, operation: Any) -> None:
        try:
            await operation
        except Exception:  # the socket died: the receive loop notices and ends the session
            logger.debug("send failed", exc_info=True)

    async def send_text(self, text: str) -> None:
        if self.closing or self.ws.closed:
            raise ConnectionAborted
        try:
            async with self.send_lock:
                # Checked under the lock: a flood may have opened its message while we waited.
                if self.wire_broken:
                    raise ConnectionAborted
                await self.ws.send_str(text)
        except ConnectionAborted:
            raise
        except Exception as exc:
            raise ConnectionAborted from exc

    async def send_raw_frame(self, frame: RawFrame) -> None:
        """Write one RFC 6455 frame exactly as given, straight onto the transport.

        aiohttp refuses what hostile frames are made of (invalid UTF-8, lying lengths, open
        fragments), so they bypass it; the send lock keeps them from interleaving with its
        frames. Waiting for the transport to drain means a flood goes no faster than the client
        reads, and stops as soon as the client is gone.
        """
        if self.closing or self.ws.closed:
            raise ConnectionAborted
        try:
            async with self.send_lock:
                transport = self.request.transport
                if transport is None or transport.is_closing():
                    raise ConnectionAborted
                # Two writes with no await between them: nothing can land inside the frame.
                transport.write(frame.header())
                transport.write(frame.payload)
                if frame.leaves_message_open:
                    self.wire_broken = True
                await self.request.writer.drain()
        except ConnectionAborted:
            raise
        except Exception as exc:
            raise ConnectionAborted from exc

    async def _send_error(self, error: RequestError, stream_id: Optional[str] = None) -> None:
        self.ctx.stats.add("errors_sent")
        self.ctx.stats.add("events_sent")
        with contextlib.suppress(ConnectionAborted):  # the socket is gone: nobody to tell
            await self.send_text(json.dumps(error.websocket_event(stream_id)))


class _WebSocketSink:
    websocket = True

    def __init__(self, session: WebSocketSession, stream_id: Optional[str]) -> None:
        self.session = session
        self.stream_id = stream_id

    async def _counted(self, sending: Awaitable[None], *, hostile: bool = False) -> None:
        # Counted before the frame leaves, so a client that has read it also sees it in
        # stats(); taken back when the socket refused it.
        stats = self.session.ctx.stats
        keys = ("events_sent", "hostile_frames_sent") if hostile else ("events_sent",)
        for key in keys:
            stats.add(key)
        try:
            await sending
        except BaseException:
            for key in keys:
                stats.add(key, -1)
            raise

    async def accepted(self) -> None:
        pass  # nothing to announce before the first event

    async def send_event(self, event: dict[str, Any]) -> None:
        await self._counted(self.session.send_text(json.dumps(event)))

    async def send_error(self, error: RequestError, sequence_number: int) -> None:
        event = error.websocket_event(self.stream_id)
        event["sequence_number"] = sequence_number
        self.session.ctx.stats.add("errors_sent")
        await self.send_event(event)

    async def send_malformed(self) -> None:
        await self._counted(self.session.send_text('{"type": "response.created", "response": {'))

    async def send_binary(self) -> None:
        await self._counted(self._send_binary())

    async def _send_binary(self) -> None:
        if self.session.closing:
            raise ConnectionAborted
        try:
            async with self.session.send_lock:
                if self.session.wire_broken:
                    raise ConnectionAborted
                await self.session.ws.send_bytes(b"\x00\x01oaiws-emulator-binary-frame")
        except ConnectionAborted:
            raise
        except Exception as exc:
            raise ConnectionAborted from exc

    async def send_hostile(self, frame: WireFrame) -> None:
        session = self.session
        if isinstance(frame, TextFrame):
            try:
                text = frame.payload.decode()
            except UnicodeDecodeError:
                # send_str cannot carry bytes that are not UTF-8: a raw TEXT frame can.
                await self._counted(
                    session.send_raw_frame(RawFrame(True, OPCODE_TEXT, frame.payload)),
                    hostile=True,
                )
            else:
                await self._counted(session.send_text(text), hostile=True)
        elif isinstance(frame, RawFrame):
            await self._counted(session.send_raw_frame(frame), hostile=True)
        else:
            await self._flood(frame)

    async def _flood(self, flood: FragmentFlood) -> None:
        # One hostile frame (one message that never ends), counted when its first fragment
        # leaves; the client closing mid-flood ends the request, not the count.
        frames = flood.frames()
        await self._counted(self.session.send_raw_frame(next(frames)), hostile=True)
        for frame in frames:
            await self.session.send_raw_frame(frame)

    async def abort(self, close_code: Optional[int]) -> None:
        self.session.close_soon(close_code, "fault injected")
        raise ConnectionAborted
