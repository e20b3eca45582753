"""Background responses: each runs as a task of the emulator's loop, keeps its events for
streaming (from the start or after a sequence number), and can be cancelled.

Everything here is touched on the emulator's loop only. A run's events are kept until the
response is deleted or, once finished, until it is among the oldest beyond ``CAPACITY``; its
final snapshot stays in the response store (retrievable, not streamable) after that.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections import OrderedDict
from typing import Any, Optional

from ._engine import ConnectionAborted, ServerContext, serve
from ._faults import Fault
from ._hostile import WireFrame
from ._requests import CreateRequest, RequestError, new_id
from ._responses import finish, response_object
from ._state import ResponseStore
from ._stats import Stats

logger = logging.getLogger("oaiws.testing")

# Finished runs whose events are kept for streaming, oldest dropped first (running ones never
# are). About 30 KB each for a short text response.
CAPACITY = 1_000
# How long stop() waits for cancelled runs to unwind (they only ever wait on sleeps).
SHUTDOWN_WAIT = 1.0

ACTIVE_STATUSES = ("queued", "in_progress")
_TERMINAL_TYPES = ("response.completed", "response.failed", "response.incomplete")
# The event that ends a cancelled run for whoever follows its stream. The streaming reference
# has no cancellation event; this is its terminal event for a response that stopped before
# finishing, and it carries the response with status "cancelled" (docs/emulator.md).
CANCELLED_EVENT = "response.incomplete"


class BackgroundRun:
    """One background response: its snapshot, its numbered events, its task."""

    def __init__(self, request: CreateRequest, stats: Stats) -> None:
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.request = request
        self.input_items = copy.deepcopy(request.input_items)
        self.stats = stats
        # The latest lifecycle snapshot (queued, then in progress) and the output so far.
        self._response = response_object(request, self.id, self.created_at, status="queued")
        self._items: dict[int, dict[str, Any]] = {}
        self._final: Optional[dict[str, Any]] = None
        # (type, JSON) of every event, in order: the index is the sequence_number.
        self.events: list[tuple[str, str]] = []
        self.task: Optional[asyncio.Task[None]] = None
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def finished(self) -> bool:
        return self._final is not None

    @property
    def status(self) -> str:
        status: str = (self._final or self._response)["status"]
        return status

    def snapshot(self) -> dict[str, Any]:
        """The response as ``GET /v1/responses/{id}`` shows it now (output so far)."""
        if self._final is not None:
            return copy.deepcopy(self._final)
        current = copy.deepcopy(self._response)
        current["output"] = [copy.deepcopy(self._items[i]) for i in sorted(self._items)]
        return current

    # -- events --------------------------------------------------------------------------------

    def record(self, event: dict[str, Any]) -> None:
        """Keep one event of the run (numbered by the emitter) and wake its followers."""
        if self._final is not None:
            return  # nothing follows a terminal event (a cancelled run's last step, say)
        event["sequence_number"] = len(self.events)
        self.events.append((event["type"], json.dumps(event)))
        self._apply(event)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, index: int) -> None:
        """Return once the event at ``index`` exists or the run has finished."""
        if index < len(self.events) or self._final is not None:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _apply(self, event: dict[str, Any]) -> None:
        """Follow the output as it is generated, so the snapshot shows it."""
        kind = event["type"]
        if kind in _TERMINAL_TYPES:
            self._final = copy.deepcopy(event["response"])
            return
        if isinstance(event.get("response"), dict):
            self._response = copy.deepcopy(event["response"])
            return
        index = event.get("output_index")
        if not isinstance(index, int):
            return
        if kind in ("response.output_item.added", "response.output_item.done"):
            self._items[index] = copy.deepcopy(event["item"])
            return
        item = self._items.get(index)
        if item is None:
            return
        if kind == "response.content_part.added":
            item.setdefault("content", []).append(copy.deepcopy(event["part"]))
        elif kind == "response.output_text.delta":
            parts = item.get("content") or []
            if 0 <= event["content_index"] < len(parts):
                parts[event["content_index"]]["text"] += event["delta"]
        elif kind == "response.function_call_arguments.delta":
            item["arguments"] = item.get("arguments", "") + event["delta"]

    # -- endings -------------------------------------------------------------------------------

    def _announce(self) -> None:
        """A run ended before it sent anything (a stalled start, say) still begins as every
        background stream does, so a follower always sees it created and queued."""
        if not self.events:
            queued = copy.deepcopy(self._response)
            self.record({"type": "response.created", "response": queued})
            self.record({"type": "response.queued", "response": queued})

    def fail(self, code: Optional[str], message: str) -> None:
        """End the run with ``response.failed`` (``error`` = ``{code, message}``)."""
        if self._final is not None:
            return
        self._announce()
        failed = finish(
            self._response,
            status="failed",
            output=[],
            usage=None,
            error={"code": code, "message": message},
        )
        self.record({"type": "response.failed", "response": failed})
        self.stats.add("responses_failed")

    def cancel(self) -> None:
        """Stop generating now and end with the response in status ``cancelled``."""
        if self.task is not None and not self.task.done():
            # On this loop the task is suspended at an await: it never records another event.
            self.task.cancel()
        if self._final is not None:
            return
        self._announce()
        output = []
        for index in sorted(self._items):
            item = copy.deepcopy(self._items[index])
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
            output.append(item)
        cancelled = finish(self._response, status="cancelled", output=output, usage=None)
        self.record({"type": CANCELLED_EVENT, "response": cancelled})
        self.stats.add("background_cancelled")


class _RunSink:
    """Where :func:`serve` puts a background run's events: kept, not sent. An error ends the
    run as ``response.failed``; the frame-level fault effects belong to the streams that follow
    the run, so they never reach here."""

    websocket = False

    def __init__(self, run: BackgroundRun) -> None:
        self.run = run

    async def accepted(self) -> None:
        pass  # nothing to announce before the first event

    async def send_event(self, event: dict[str, Any]) -> None:
        self.run.record(event)

    async def send_error(self, error: RequestError, sequence_number: int) -> None:
        self.run.fail(error.code, error.message)

    async def send_malformed(self) -> None:
        return None

    async def send_binary(self) -> None:
        return None

    async def send_hostile(self, frame: WireFrame) -> None:
        return None

    async def abort(self, close_code: Optional[int]) -> None:
        raise ConnectionAborted


class BackgroundRuns:
    """The background responses of one emulator, by id (kept across a stop()/start())."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._runs: OrderedDict[str, BackgroundRun] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._runs)

    def get(self, response_id: str) -> Optional[BackgroundRun]:
        return self._runs.get(response_id)

    def pop(self, response_id: str) -> Optional[BackgroundRun]:
        return self._runs.pop(response_id, None)

    def start(
        self, ctx: ServerContext, request: CreateRequest, fault: Optional[Fault]
    ) -> BackgroundRun:
        """Queue ``request`` (its own ``controls.fault`` already folded into ``fault``)."""
        run = BackgroundRun(request, ctx.stats)
        self._runs[run.id] = run
        self._trim(ctx.store)
        ctx.stats.add("background_started")
        task = asyncio.ensure_future(self._run(ctx, run, fault))
        run.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    async def _run(self, ctx: ServerContext, run: BackgroundRun, fault: Optional[Fault]) -> None:
        try:
            await serve(
                ctx,
                run.request,
                _RunSink(run),
                cache=None,
                fault=fault,
                response_id=run.id,
                created_at=run.created_at,
            )
        except ConnectionAborted:
            pass
        except Exception:  # a bug must cost one response, never the server
            logger.exception("background response %s failed", run.id)
        if not run.finished:
            run.fail("server_error", "The server had an error while processing your request.")

    def _trim(self, store: ResponseStore) -> None:
        excess = len(self._runs) - self._capacity
        if excess <= 0:
            return
        for response_id in [i for i, run in self._runs.items() if run.finished][:excess]:
            run = self._runs.pop(response_id)
            if run.status not in ("completed", "incomplete"):
                # Those two were stored as they finished (and can be continued from); the
                # others are kept for retrieval only.
                store.put(run.snapshot(), None, run.input_items)

    async def shutdown(self) -> None:
        """Cancel every run still going (the emulator is stopping); each ends failed."""
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT)
        for run in self._runs.values():
            if not run.finished:
                run.fail("server_error", "The emulator stopped before this response finished.")
