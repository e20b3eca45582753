"""The aiohttp application: routes, authentication, the upgrade, REST, SSE and admin API."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import hmac
import json
import logging
import weakref
from collections.abc import Awaitable
from typing import Any, Callable, Optional

from aiohttp import web

from oaiws.errors import ConfigurationError

from ._background import ACTIVE_STATUSES, BackgroundRun
from ._engine import ConnectionAborted, ServerContext, fault_error, previous_not_found, serve
from ._faults import Fault
from ._hostile import TextFrame, WireFrame
from ._options import check_websocket_status
from ._requests import CreateRequest, RequestError, new_id, parse_create
from ._websocket import CLOSE_HANDSHAKE_TIMEOUT, MAX_MESSAGE_BYTES, WebSocketSession

logger = logging.getLogger("oaiws.testing")

CONTEXT_KEY: web.AppKey[ServerContext] = web.AppKey("oaiws_context", ServerContext)
SESSIONS_KEY = web.AppKey("oaiws_sessions", set[WebSocketSession])
# The TCP connections (their transports) that have carried plain HTTP requests.
HTTP_TRANSPORTS_KEY = web.AppKey("oaiws_http_transports", weakref.WeakSet)


def build_app(ctx: ServerContext) -> web.Application:
    app = web.Application(
        client_max_size=MAX_MESSAGE_BYTES,
        middlewares=[_count_http_connections, _request_id, _never_crash],
    )
    app[CONTEXT_KEY] = ctx
    app[SESSIONS_KEY] = set()
    app[HTTP_TRANSPORTS_KEY] = weakref.WeakSet()
    app.router.add_get("/v1/responses", _responses_get)
    app.router.add_post("/v1/responses", _responses_post)
    app.router.add_get("/v1/responses/{response_id}", _retrieve)
    app.router.add_delete("/v1/responses/{response_id}", _delete)
    app.router.add_get("/v1/responses/{response_id}/input_items", _input_items)
    app.router.add_post("/v1/responses/{response_id}/cancel", _cancel)
    app.router.add_get("/_emulator/stats", _admin_stats)
    app.router.add_post("/_emulator/stats/reset", _admin_reset)
    app.router.add_post("/_emulator/faults", _admin_inject)
    app.router.add_delete("/_emulator/faults", _admin_clear)
    app.router.add_post("/_emulator/close_all", _admin_close_all)
    app.router.add_get("/_emulator/websocket", _admin_websocket)
    app.router.add_post("/_emulator/websocket", _admin_websocket)
    return app


def close_all(app: web.Application, code: Optional[int]) -> int:
    """Close every open socket now (code None: drop TCP without a close frame)."""
    registry: set[WebSocketSession] = app[SESSIONS_KEY]
    sessions = list(registry)
    for session in sessions:
        session.close_soon(code, "closed by the emulator")
    return len(sessions)


def open_sessions(app: web.Application) -> int:
    return len(app[SESSIONS_KEY])


def abort_all(app: web.Application) -> None:
    registry: set[WebSocketSession] = app[SESSIONS_KEY]
    for session in list(registry):
        session.abort()


# -- plumbing ------------------------------------------------------------------------------


# Each request's handler runs in its own task, so a context variable carries the id from the
# middleware to the handler without the typed-key API that only newer aiohttp releases have.
_REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("oaiws_request_id", default="")


@web.middleware
async def _count_http_connections(request: web.Request, handler: Any) -> web.StreamResponse:
    # http_connections: how many TCP connections carried plain HTTP requests, so a test can
    # tell a reused keep-alive connection from a new one.
    transport = request.transport
    if transport is not None and request.headers.get("Upgrade", "").lower() != "websocket":
        seen: weakref.WeakSet[Any] = request.app[HTTP_TRANSPORTS_KEY]
        if transport not in seen:
            seen.add(transport)
            _ctx(request).stats.add("http_connections")
    response: web.StreamResponse = await handler(request)
    return response


@web.middleware
async def _request_id(request: web.Request, handler: Any) -> web.StreamResponse:
    request_id = "req_" + new_id("x")[2:34]
    _REQUEST_ID.set(request_id)
    response: web.StreamResponse = await handler(request)
    if not response.prepared:
        response.headers.setdefault("x-request-id", request_id)
    return response


@web.middleware
async def _never_crash(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException:
        raise
    except ConnectionAborted:
        return web.Response(status=499)
    except Exception:  # one bad request must never take the emulator down
        logger.exception("handler for %s %s failed", request.method, request.path)
        return _error_response(
            RequestError(
                "The server had an error processing your request.",
                status=500,
                type="server_error",
                code="server_error",
            )
        )
    return response


def _ctx(request: web.Request) -> ServerContext:
    return request.app[CONTEXT_KEY]


def _error_response(error: RequestError) -> web.Response:
    return web.json_response(error.http_body(), status=error.status, headers=error.headers)


def _authorized(request: web.Request) -> Optional[web.Response]:
    """None when the key is right, else the 401 to answer (the key is never echoed)."""
    expected = _ctx(request).options.api_key.encode()
    given: Optional[str] = None
    authorization = request.headers.get("Authorization", "")
    if authorization[:7].lower() == "bearer ":
        given = authorization[7:].strip()
    elif "api-key" in request.headers:
        given = request.headers["api-key"].strip()
    if given is not None and hmac.compare_digest(given.encode(), expected):
        return None
    if given is None:
        message = (
            "You didn't provide an API key. Provide it in an 'Authorization: Bearer KEY'"
            " or 'api-key: KEY' header."
        )
    else:
        message = "Incorrect API key provided."
    return _error_response(RequestError(message, status=401, code="invalid_api_key"))


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    _ctx(request).stats.add("bytes_received", len(raw))
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise RequestError(
            "We could not parse the JSON body of your request.", code="invalid_json"
        ) from None


# -- the WebSocket upgrade -----------------------------------------------------------------


async def _responses_get(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    if request.headers.get("Upgrade", "").lower() != "websocket":
        ctx.stats.add("http_requests")
        return _error_response(
            RequestError(
                "GET /v1/responses is the WebSocket endpoint: send an Upgrade request, or POST to"
                " create a response.",
                status=405,
                code="method_not_allowed",
            )
        )
    refusal = _authorized(request)
    status = ctx.switches.websocket_status
    if refusal is None and status is not None:
        # A server without WebSocket mode: no delay and no fault, those belong to upgrades.
        ctx.stats.add("refused_upgrades")
        ctx.stats.add("websocket_refused")
        return _error_response(websocket_refusal(status))
    fault = ctx.faults.take("connection") if refusal is None else None
    delay = ctx.options.handshake_delay + (fault.handshake_delay if fault else 0.0)
    if delay:
        await asyncio.sleep(delay)
    if refusal is None and fault is not None and fault.refuse_status is not None:
        ctx.stats.add("faults_applied")
        error = fault_error(
            Fault(
                error_status=fault.refuse_status,
                retry_after=fault.retry_after,
                error_code=fault.error_code,
            )
        )
        refusal = _error_response(error)
    if refusal is not None:
        ctx.stats.add("refused_upgrades")
        return refusal
    if fault is not None and not fault.acts_on_request:
        ctx.stats.add("faults_applied")  # a pure handshake delay was this fault's whole effect

    ws = web.WebSocketResponse(
        timeout=CLOSE_HANDSHAKE_TIMEOUT,
        autoping=False,
        compress=False,
        max_msg_size=MAX_MESSAGE_BYTES,
    )
    if not ws.can_prepare(request).ok:
        ctx.stats.add("refused_upgrades")
        return _error_response(
            RequestError("Invalid WebSocket upgrade request.", code="invalid_upgrade")
        )
    ws.headers["x-request-id"] = _REQUEST_ID.get()
    # Counted before the 101 goes out, so a client that has seen its upgrade succeed also
    # sees it in stats() at once.
    ctx.stats.add("handshakes")
    ctx.stats.add("connections_total")
    ctx.stats.add("connections_open")
    try:
        await ws.prepare(request)
    except BaseException:
        ctx.stats.add("connections_open", -1)
        raise
    model = request.query.get("model") or None
    session = WebSocketSession(ctx, request, ws, default_model=model, connection_fault=fault)
    sessions = request.app[SESSIONS_KEY]
    sessions.add(session)
    try:
        await session.run()
    finally:
        sessions.discard(session)
        ctx.stats.add("connections_open", -1)
    return ws


def websocket_refusal(status: int) -> RequestError:
    """What a server without WebSocket mode answers an upgrade with: the real API's answer to
    a route it does not serve for 404, the same shape for any other status."""
    if status == 404:
        message = "Invalid URL (GET /v1/responses)"
    else:
        message = "WebSocket mode is not available on this server: use HTTP."
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return RequestError(message, status=status, type=kind, code=None, param=None)


# -- HTTP create (JSON or SSE) -------------------------------------------------------------


async def _responses_post(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    ctx.stats.add("http_requests")
    ctx.stats.add("requests")
    refusal = _authorized(request)
    if refusal is not None:
        return refusal
    options = ctx.options
    try:
        create = parse_create(
            await _read_json(request),
            websocket=False,
            default_model=None,
            deltas=options.deltas,
            delta_delay=options.delta_delay,
            first_event_delay=options.first_event_delay,
        )
    except RequestError as error:
        ctx.stats.add("errors_sent")
        return _error_response(error)
    fault = None if create.controls.fault else ctx.faults.take("request")
    if create.background:
        return await _background_create(request, ctx, create, create.controls.fault or fault)
    sink: _HttpSink = _SseSink(request) if create.stream else _JsonSink(request)
    try:
        await serve(ctx, create, sink, cache=None, fault=fault)
    except ConnectionAborted:
        return sink.after_abort()
    return await sink.finish()


class _HttpSink:
    websocket = False

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.stats = _ctx(request).stats
        self.error: Optional[RequestError] = None
        self.aborted_cleanly = False

    async def accepted(self) -> None:
        pass

    async def send_error(self, error: RequestError, sequence_number: int) -> None:
        self.stats.add("errors_sent")
        self.error = error

    async def abort(self, close_code: Optional[int]) -> None:
        transport = self.request.transport
        if close_code is None and transport is not None:
            transport.abort()
        self.aborted_cleanly = close_code is not None
        raise ConnectionAborted

    async def send_event(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    async def send_malformed(self) -> None:
        raise NotImplementedError

    async def send_binary(self) -> None:
        raise NotImplementedError

    async def send_hostile(self, frame: WireFrame) -> None:
        raise NotImplementedError

    def after_abort(self) -> web.StreamResponse:
        raise NotImplementedError

    async def finish(self) -> web.StreamResponse:
        raise NotImplementedError


class _JsonSink(_HttpSink):
    def __init__(self, request: web.Request) -> None:
        super().__init__(request)
        self.final: Optional[dict[str, Any]] = None
        self.body: Optional[bytes] = None

    async def send_event(self, event: dict[str, Any]) -> None:
        self.stats.add("events_sent")
        if event["type"] in ("response.completed", "response.failed", "response.incomplete"):
            self.final = event["response"]

    async def send_malformed(self) -> None:
        self.body = b'{"id": "resp_'

    async def send_binary(self) -> None:
        self.body = b"\x00\x01\xff binary"

    async def send_hostile(self, frame: WireFrame) -> None:
        # Without a stream only one text can be answered: the preset's first, as the body.
        if self.body is None:
            self.body = _hostile_text(frame).payload
            self.stats.add("events_sent")
            self.stats.add("hostile_frames_sent")

    def after_abort(self) -> web.StreamResponse:
        # Without a stream there are no events to cut between: the answer is lost entirely.
        transport = self.request.transport
        if transport is not None:
            transport.abort()
        return web.Response(status=499)

    async def finish(self) -> web.StreamResponse:
        if self.error is not None:
            return _error_response(self.error)
        if self.body is not None:
            return web.Response(body=self.body, content_type="application/json")
        return web.json_response(self.final)


class _SseSink(_HttpSink):
    def __init__(self, request: web.Request) -> None:
        super().__init__(request)
        self.response: Optional[web.StreamResponse] = None

    async def open(self) -> web.StreamResponse:
        """Send the status and headers (once): the events follow."""
        try:
            if self.response is None:
                self.response = web.StreamResponse(
                    headers={
                        "Content-Type": "text/event-stream; charset=utf-8",
                        "Cache-Control": "no-cache",
                        "x-request-id": _REQUEST_ID.get(),
                    }
                )
                await self.response.prepare(self.request)
        except (ConnectionError, RuntimeError) as exc:
            raise ConnectionAborted from exc
        return self.response

    async def _write(self, data: bytes) -> None:
        response = await self.open()
        try:
            await response.write(data)
        except (ConnectionError, RuntimeError) as exc:
            raise ConnectionAborted from exc

    async def _counted(self, data: bytes, *, hostile: bool = False) -> None:
        # Counted before the bytes leave, so a client that has read them also sees them in
        # stats(); taken back when the connection refused them.
        keys = ("events_sent", "hostile_frames_sent") if hostile else ("events_sent",)
        for key in keys:
            self.stats.add(key)
        try:
            await self._write(data)
        except BaseException:
            for key in keys:
                self.stats.add(key, -1)
            raise

    async def accepted(self) -> None:
        await self.open()

    async def send_event(self, event: dict[str, Any]) -> None:
        await self.send_serialized(event["type"], json.dumps(event))

    async def send_serialized(self, kind: str, data: str) -> None:
        await self._counted(f"event: {kind}\ndata: {data}\n\n".encode())

    async def send_error(self, error: RequestError, sequence_number: int) -> None:
        if self.response is None:
            await super().send_error(error, sequence_number)  # before the stream: an HTTP error
            return
        self.stats.add("errors_sent")
        await self.send_event(error.sse_event(sequence_number))

    async def send_malformed(self) -> None:
        await self._counted(b'event: response.created\ndata: {"type": "response.created", "r\n\n')

    async def send_binary(self) -> None:
        # SSE has no binary frames; undecodable bytes are the nearest equivalent.
        await self._counted(b"event: response.created\ndata: \xff\xfe\x00\x01\n\n")

    async def send_hostile(self, frame: WireFrame) -> None:
        text = _hostile_text(frame)
        event = text.sse_event.encode()
        await self._counted(b"event: " + event + b"\ndata: " + text.payload + b"\n\n", hostile=True)

    def after_abort(self) -> web.StreamResponse:
        if self.response is None:
            transport = self.request.transport
            if transport is not None:
                transport.abort()
            return web.Response(status=499)
        return self.response

    async def finish(self) -> web.StreamResponse:
        if self.response is None:
            if self.error is not None:
                return _error_response(self.error)
            return web.Response(text="", content_type="text/event-stream")
        await self.response.write_eof()
        return self.response


# -- background responses ------------------------------------------------------------------


async def _background_create(
    request: web.Request, ctx: ServerContext, create: CreateRequest, fault: Optional[Fault]
) -> web.StreamResponse:
    """Queue a background response: answer it at once (JSON) or follow its run (SSE)."""
    error: Optional[RequestError] = None
    previous = create.previous_response_id
    if fault is not None and fault.hostile_frame is not None:
        error = RequestError(
            f"The hostile frame preset '{fault.hostile_frame}' is not served to background"
            " responses: their events are kept and replayed, never improvised on a wire.",
            code="invalid_value",
            param=None,
        )
    elif previous is not None and ctx.store.chain(previous) is None:
        # Checked before queueing, so a create that names no known response is refused at
        # once, as a foreground create is, instead of queueing a run that can only fail.
        ctx.stats.add("previous_response_not_found")
        error = previous_not_found(previous)
    if error is not None:
        ctx.stats.add("errors_sent")
        return _error_response(error)
    run_fault, stream_fault = _split_fault(fault)
    create = dataclasses.replace(create, controls=dataclasses.replace(create.controls, fault=None))
    run = ctx.background.start(ctx, create, run_fault)
    if create.stream:
        return await _follow(request, run, -1, stream_fault)
    if stream_fault is None:
        return web.json_response(run.snapshot())
    # The answer is the one thing on this wire for a stream-level fault to break.
    if stream_fault.close_after_events is not None:
        transport = request.transport
        if transport is not None:
            transport.abort()
        return web.Response(status=499)
    body = b'{"id": "resp_' if stream_fault.malformed_frame else b"\x00\x01\xff binary"
    return web.Response(body=body, content_type="application/json")


def _split_fault(fault: Optional[Fault]) -> tuple[Optional[Fault], Optional[Fault]]:
    """(what acts on the run, what acts on the wire of the request that created it).

    The run is not a connection: dropping or garbling one stream must not stop it, so the
    frame-level fields go to the creating request's answer (a stream, or the JSON answer).
    """
    if fault is None:
        return None, None
    run = dataclasses.replace(
        fault, close_after_events=None, malformed_frame=False, binary_frame=False
    )
    if fault.close_after_events is None and not fault.malformed_frame and not fault.binary_frame:
        return run, None
    stream = Fault(
        close_after_events=fault.close_after_events,
        close_code=fault.close_code,
        malformed_frame=fault.malformed_frame,
        binary_frame=fault.binary_frame,
    )
    return run, stream


async def _follow(
    request: web.Request, run: BackgroundRun, after: int, fault: Optional[Fault]
) -> web.StreamResponse:
    """Stream the run's events after sequence number ``after`` as SSE: the kept ones, then the
    live ones until the terminal event. Leaving early never stops the run."""
    sink = _SseSink(request)
    try:
        if fault is not None and fault.close_after_events == 0:
            await sink.abort(fault.close_code)
        await sink.open()
        index, sent = max(after + 1, 0), 0
        limit = fault.close_after_events if fault is not None else None
        while True:
            while index < len(run.events):
                kind, data = run.events[index]
                index += 1
                if sent == 0 and fault is not None and fault.malformed_frame:
                    await sink.send_malformed()
                elif sent == 0 and fault is not None and fault.binary_frame:
                    await sink.send_binary()
                else:
                    await sink.send_serialized(kind, data)
                sent += 1
                if limit is not None and fault is not None and sent >= limit:
                    await sink.abort(fault.close_code)
            if run.finished:
                break
            await run.wait(index)
    except ConnectionAborted:
        return sink.after_abort()
    return await sink.finish()


def _hostile_text(frame: WireFrame) -> TextFrame:
    if not isinstance(frame, TextFrame):
        # serve() refuses the WebSocket-only presets over HTTP before anything is sent.
        raise TypeError(f"{type(frame).__name__} cannot be sent over HTTP")
    return frame


# -- REST on stored responses --------------------------------------------------------------


def _not_found(response_id: str) -> web.Response:
    return _error_response(
        RequestError(
            f"Response with id '{response_id}' not found.", status=404, code=None, param=None
        )
    )


_StoredHandler = Callable[[web.Request, ServerContext, str], Awaitable[web.StreamResponse]]


def _stored_response_endpoint(
    handler: _StoredHandler,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The REST endpoints on ``/v1/responses/{id}``: counted, authenticated, then handled."""

    @functools.wraps(handler)
    async def endpoint(request: web.Request) -> web.StreamResponse:
        ctx = _ctx(request)
        ctx.stats.add("http_requests")
        refusal = _authorized(request)
        if refusal is not None:
            return refusal
        return await handler(request, ctx, request.match_info["response_id"])

    return endpoint


@_stored_response_endpoint
async def _retrieve(
    request: web.Request, ctx: ServerContext, response_id: str
) -> web.StreamResponse:
    try:
        stream = _query_flag(request, "stream")
        after = _query_starting_after(request) if stream else -1
    except RequestError as error:
        return _error_response(error)
    run = ctx.background.get(response_id)
    if run is not None:
        if stream:
            return await _follow(request, run, after, None)
        return web.json_response(run.snapshot())
    stored = ctx.store.response(response_id)
    if stored is None:
        return _not_found(response_id)
    if not stream:
        return web.json_response(stored)
    if stored.get("background"):
        message = f"The events of background response '{response_id}' are no longer kept."
    else:
        message = (
            f"Response '{response_id}' was not created with background=true: only background"
            " responses can be streamed after they were created."
        )
    return _error_response(RequestError(message, param="stream"))


def _query_flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None or raw.lower() in ("false", "0"):
        return False
    if raw.lower() in ("true", "1"):
        return True
    raise RequestError(
        f"Invalid value for '{name}': expected a boolean.", code="invalid_type", param=name
    )


def _query_starting_after(request: web.Request) -> int:
    raw = request.query.get("starting_after")
    if raw is None:
        return -1
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise RequestError(
            "Invalid 'starting_after': expected a non-negative integer (a sequence number).",
            code="invalid_value",
            param="starting_after",
        )
    return value


@_stored_response_endpoint
async def _cancel(request: web.Request, ctx: ServerContext, response_id: str) -> web.StreamResponse:
    run = ctx.background.get(response_id)
    if run is None:
        stored = ctx.store.response(response_id)
        if stored is None:
            return _not_found(response_id)
        if not stored.get("background"):
            return _error_response(
                RequestError("Only responses created with background=true can be cancelled.")
            )
        if stored["status"] == "cancelled":
            return web.json_response(stored)
        return _error_response(_not_cancellable(stored["status"]))
    if run.status not in ("cancelled", *ACTIVE_STATUSES):
        return _error_response(_not_cancellable(run.status))
    run.cancel()  # a second cancel finds it cancelled and answers the same response
    return web.json_response(run.snapshot())


def _not_cancellable(status: str) -> RequestError:
    return RequestError(
        f"A response with status '{status}' cannot be cancelled: only a queued or in-progress"
        " background response can be."
    )


@_stored_response_endpoint
async def _delete(request: web.Request, ctx: ServerContext, response_id: str) -> web.StreamResponse:
    run = ctx.background.pop(response_id)
    if run is not None:
        run.cancel()  # a run still going stops first; whoever follows it sees it end
    if not ctx.store.delete(response_id) and run is None:
        return _not_found(response_id)
    return web.json_response({"id": response_id, "object": "response.deleted", "deleted": True})


@_stored_response_endpoint
async def _input_items(
    request: web.Request, ctx: ServerContext, response_id: str
) -> web.StreamResponse:
    run = ctx.background.get(response_id)
    items = list(run.input_items) if run is not None else ctx.store.input_items(response_id)
    if items is None:
        return _not_found(response_id)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        return _error_response(
            RequestError(
                "Invalid 'order': use 'asc' or 'desc'.", param="order", code="invalid_value"
            )
        )
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        return _error_response(
            RequestError("Invalid 'limit': use 1-100.", param="limit", code="invalid_value")
        )
    if order == "desc":
        items.reverse()
    after = request.query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return web.json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": len(items) > limit,
        }
    )


# -- admin API -----------------------------------------------------------------------------


async def _admin_stats(request: web.Request) -> web.StreamResponse:
    refusal = _authorized(request)
    if refusal is not None:
        return refusal
    return web.json_response(_ctx(request).stats.snapshot())


async def _admin_reset(request: web.Request) -> web.StreamResponse:
    refusal = _authorized(request)
    if refusal is not None:
        return refusal
    stats = _ctx(request).stats
    stats.reset()
    return web.json_response(stats.snapshot())


async def _admin_inject(request: web.Request) -> web.StreamResponse:
    refusal = _authorized(request)
    if refusal is not None:
        return refusal
    ctx = _ctx(request)
    try:
        body = await _read_json(request)
        if not isinstance(body, dict):
            raise ConfigurationError("the body must be a JSON object")
        fault = Fault.from_dict(body.get("fault", {}))
        ctx.faults.inject(fault, on=body.get("on", "request"), times=body.get("times", 1))
    except RequestError as error:
        return _error_response(error)
    except ConfigurationError as exc:
        return _error_response(RequestError(str(exc), param="fault"))
    return web.json_response({"pending": ctx.faults.pending()})


async def _admin_clear(request: web.Request) -> web.StreamResponse:
    refusal = _authorized(request)
    if refusal is not None:
        return refusal
    ctx = _ctx(request)
    ctx.faults.clear()
    return web.json_response({"pending": ctx.faults.pending()})


async def _admin_close_all(request: web.Request) -> web.StreamResponse:
    refusal = _authorized(request)
    if refusal is not None:
        return refusal
    try:
        body = await _read_json(request)
    except RequestError as error:
        return _error_response(error)
    code = body.get("code", 1001) if isinstance(body, dict) else 1001
    if code is not None and not (isinstance(code, int) and 1000 <= code <= 4999):
        return _error_response(RequestError("Invalid 'code': 1000-4999 or null.", param="code"))
    return web.json_response({"closed": close_all(request.app, code)})


async def _admin_websocket(request: web.Request) -> web.StreamResponse:
    """GET: the WebSocket switch. POST ``{"status": 404}``: refuse upgrades; ``null``: serve."""
    refusal = _authorized(request)
    if refusal is not None:
        return refusal
    switches = _ctx(request).switches
    if request.method == "POST":
        try:
            body = await _read_json(request)
            if not isinstance(body, dict) or "status" not in body:
                raise ConfigurationError('the body must be {"status": STATUS or null}')
            check_websocket_status(body["status"])
        except RequestError as error:
            return _error_response(error)
        except ConfigurationError as exc:
            return _error_response(RequestError(str(exc), param="status"))
        switches.websocket_status = body["status"]
    return web.json_response({"status": switches.websocket_status})
