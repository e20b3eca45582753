"""``client.batch(...)``: many requests over the client's pool, paced, with results as they come.

A ``BatchRun`` reads its requests lazily (a generator of millions is fine: it holds at most
``4 * concurrency`` requests and results at once), runs them on ``concurrency`` worker threads
that share the client's pool, and yields one ``BatchResult`` per request: in completion order,
or in input order with ``ordered=True``. A failure is a result (``.error``), never an
exception that stops the run; each request is retried under the client's own policy
(``max_retries``, ``retry-after``).

Pacing (``_pacing``): starts are spread evenly under ``max_requests_per_minute`` and
``max_tokens_per_minute``; a 429 pauses every start for its ``retry-after`` and halves the
requests allowed in flight, which then grow back by about one per round trip.

Stopping: ``stop(grace)`` starts nothing more and lets the requests in flight finish (they are
still yielded) for up to ``grace`` seconds, then closes their connections; ``close()`` does the
same without yielding what is left. A result is yielded whole or not at all.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from ._closing import ClosesOnExit
from ._mux import MAX_ACTIVE
from ._pacing import ConcurrencyLimit, Pacer, estimate_tokens
from ._retry import MAX_RETRY_AFTER
from ._stream import collect_response
from .errors import (
    APIError,
    APIStatusError,
    BatchStoppedError,
    ConfigurationError,
    OAIWSError,
)

if TYPE_CHECKING:
    from ._events import Response
    from ._mux import LaneLease
    from ._runtime import Runtime
    from ._transport import AnyChannel, ChannelSource

__all__ = [
    "BATCH_URL",
    "BatchProgress",
    "BatchResult",
    "BatchRun",
    "request_fields",
]

log = logging.getLogger("oaiws")

BATCH_URL = "/v1/responses"
# Results and requests held at once, per unit of concurrency: the reorder window of
# ordered=True, and what a slow consumer lets pile up.
WINDOW_PER_WORKER = 4
DEFAULT_GRACE = 10.0
# Seconds the requests closed at the end of a grace period get to report their end.
ABORT_SETTLE = 1.0
# How often waiting workers look whether the run was stopped (stop() sets a plain flag).
STOP_POLL = 0.1

ProgressCallback = Callable[["BatchProgress"], None]


@dataclass(frozen=True)
class BatchResult:
    """One request's outcome.

    ``index``: its position in the input (from 0). ``custom_id``: the Batch API line's, ``None``
    for plain field dicts. ``response``: the ``Response`` (``None`` on failure). ``error``: the
    documented ``oaiws`` exception (``None`` on success): ``ConfigurationError`` for a request
    refused before sending, an ``APIError`` subclass otherwise. ``attempts``: tries made (0 when
    nothing was sent). ``latency``: seconds from its first try to its end.
    ``request_id``: the server's id for the exchange, when it gave one.
    """

    index: int
    custom_id: Optional[str]
    response: Optional[Response]
    error: Optional[OAIWSError]
    attempts: int
    latency: float
    request_id: Optional[str] = None

    @property
    def ok(self) -> bool:
        """True when a response came back and did not fail (``completed``, or ``incomplete``,
        e.g. cut at ``max_output_tokens``)."""
        return self.error is None and self.response is not None and self.response.status != "failed"


@dataclass(frozen=True)
class BatchProgress:
    """A snapshot of a run: counts so far, tokens from the responses' usage, 429s met, the
    concurrency the run allows itself now."""

    done: int
    succeeded: int
    failed: int
    in_flight: int
    retries: int
    rate_limited: int
    input_tokens: int
    output_tokens: int
    elapsed: float
    concurrency: int

    @property
    def requests_per_second(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


def request_fields(item: Any) -> tuple[Optional[str], dict[str, Any]]:
    """``(custom_id, response.create fields)`` of one batch item: a dict of fields, or a Batch
    API line (``custom_id``, ``method``, ``url``, ``body``). Raises ``ConfigurationError``."""
    if not isinstance(item, Mapping):
        raise ConfigurationError(
            f"a batch request must be a dict of fields or a Batch API line, not "
            f"{type(item).__name__}"
        )
    if "custom_id" not in item:
        return None, dict(item)
    custom_id = item["custom_id"]
    if not isinstance(custom_id, str) or not custom_id:
        raise ConfigurationError("custom_id must be a non-empty string")
    extra = sorted(set(item) - {"custom_id", "method", "url", "body"})
    if extra:
        raise ConfigurationError(f"unknown Batch API field(s): {', '.join(extra)}")
    method = item.get("method", "POST")
    if method != "POST":
        raise ConfigurationError(f"method must be 'POST', not {method!r}")
    url = item.get("url", BATCH_URL)
    if url != BATCH_URL:
        raise ConfigurationError(f"url must be {BATCH_URL!r}, not {url!r}")
    body = item.get("body")
    if not isinstance(body, Mapping):
        raise ConfigurationError("body must be an object of response.create fields")
    fields = dict(body)
    if fields.get("stream") is False:
        del fields["stream"]  # the Batch API's default, and what a batch does anyway
    return custom_id, fields


class _Stopped(Exception):
    """Raised in a worker's request when the run stops before a try: never retried."""


class _Watch:
    """One request's tries: paced, counted, its 429s reported to the run's limits, and its
    channel known so that ``stop`` can close it once the grace period is over."""

    __slots__ = (
        "_channel",
        "_lock",
        "_run",
        "aborted",
        "attempts",
        "last_error",
        "rate_limited",
        "request_id",
        "round",
        "started",
        "tokens",
    )

    def __init__(self, run: BatchRun, tokens: int, started_round: int) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._channel: Optional[AnyChannel] = None
        self.tokens = tokens
        self.round = started_round
        self.attempts = 0
        self.rate_limited = False
        self.aborted = False
        self.last_error: Optional[APIError] = None
        self.request_id: Optional[str] = None
        self.started = 0.0

    # -- AttemptWatch -------------------------------------------------------------------------

    def attempt(self) -> None:
        run = self._run
        if run._stop_requested:
            raise _Stopped  # nothing new goes on the wire after stop(), retries included
        if self.attempts:
            run._wait_for_pace(self.tokens)  # the first try waited before its deadline began
        else:
            self.started = time.monotonic()
        self.attempts += 1

    def failed(self, error: APIError) -> None:
        self.last_error = error
        if (
            isinstance(error, APIStatusError)
            and error.status_code == 429
            and error.code != "insufficient_quota"  # waiting does not fix that one
        ):
            self.rate_limited = True
            self._run._on_rate_limited(self.round, error.retry_after)
        if self._run._stop_requested:
            raise _Stopped  # no retry, and no pause before it

    def sleep(self, seconds: float) -> None:
        if self._run._sleep_unless_stopped(seconds):
            raise _Stopped

    # -- the channel, for abort --------------------------------------------------------------

    def took(self, channel: AnyChannel) -> bool:
        with self._lock:
            if self.aborted:
                return False
            self._channel = channel
            return True

    def gave_back(self, channel: AnyChannel) -> bool:
        """The request is done with ``channel``; False when ``abort`` closed it meanwhile."""
        with self._lock:
            self.request_id = getattr(channel, "request_id", None) or self.request_id
            self._channel = None
            return not self.aborted

    def abort(self) -> None:
        with self._lock:
            if self.aborted:
                return
            self.aborted = True
            channel, self._channel = self._channel, None
        if channel is not None:
            # Its owner's read fails at once; it then discards the channel (gave_back says
            # so), which never goes back to the pool.
            channel.interrupt()


class _WatchedChannels:
    """The client's channels, seen by one request's ``_Watch``."""

    __slots__ = ("_inner", "_watch")

    def __init__(self, inner: ChannelSource, watch: _Watch) -> None:
        self._inner = inner
        self._watch = watch

    def acquire(
        self, timeout: float, affinity: Optional[str], lease: Optional[LaneLease] = None
    ) -> AnyChannel:
        channel = self._inner.acquire(timeout, affinity, lease)
        if not self._watch.took(channel):
            self._inner.discard(channel, "the batch was stopped", lost=False)
            raise _Stopped
        return channel

    def release(self, channel: AnyChannel, *, hold: bool) -> None:
        if self._watch.gave_back(channel):
            self._inner.release(channel, hold=hold)
        else:
            self._inner.discard(channel, "the batch was stopped", lost=False)

    def discard(self, channel: AnyChannel, reason: str, *, lost: bool) -> None:
        self._watch.gave_back(channel)
        self._inner.discard(channel, reason, lost=lost)


class BatchRun(ClosesOnExit, Iterator[BatchResult]):
    """The iterator ``Client.batch`` returns; also a context manager (``close`` on exit)."""

    def __init__(
        self,
        runtime: Runtime,
        requests: Iterable[Any],
        *,
        concurrency: Optional[int] = None,
        ordered: bool = False,
        max_requests_per_minute: Optional[float] = None,
        max_tokens_per_minute: Optional[float] = None,
        progress: Union[bool, ProgressCallback, None] = None,
        timeout: Optional[float] = None,
    ) -> None:
        runtime.check_open()
        max_connections = runtime.config.max_connections
        # With lanes, each connection runs up to MAX_ACTIVE responses at once.
        capacity = max_connections * (MAX_ACTIVE if runtime.config.lanes else 1)
        if concurrency is None:
            concurrency = max_connections
        check_count("concurrency", concurrency)
        if concurrency > capacity:
            per = f" x {MAX_ACTIVE} lanes" if runtime.config.lanes else ""
            raise ConfigurationError(
                f"concurrency={concurrency} is more than the client can run at once "
                f"(max_connections={max_connections}{per}): the extra requests would only wait "
                "for a connection (and fail with PoolTimeoutError); raise max_connections or "
                "lower concurrency"
            )
        for name, value in (
            ("max_requests_per_minute", max_requests_per_minute),
            ("max_tokens_per_minute", max_tokens_per_minute),
        ):
            if value is not None:
                check_positive(name, value)
        if not isinstance(ordered, bool):
            raise ConfigurationError("ordered must be True or False")
        try:
            source = iter(requests)
        except TypeError:
            raise ConfigurationError(
                f"requests must be an iterable of dicts, not {type(requests).__name__}"
            ) from None
        self._runtime = runtime
        self._timeout = runtime.check_timeout(timeout)
        self._concurrency = concurrency
        self._ordered = ordered
        self._source = enumerate(source)
        self._window = WINDOW_PER_WORKER * concurrency
        self._pacer = Pacer(max_requests_per_minute, max_tokens_per_minute)
        self._limit = ConcurrencyLimit(concurrency)
        self._progress_bar, self._on_progress = _progress_sinks(progress)

        self._cond = threading.Condition()
        self._taken = 0  # requests taken from the source
        self._yielded = 0
        self._ready: deque[BatchResult] = deque()  # completion order
        self._by_index: dict[int, BatchResult] = {}  # input order
        self._source_done = False
        self._source_error: Optional[BaseException] = None
        self._workers: list[threading.Thread] = []
        self._active = 0  # workers not yet exited
        self._watches: set[_Watch] = set()
        self._stop_requested = False  # set by stop(): a plain flag, so no lock is needed
        self._abort_at: Optional[float] = None
        self._closed = False
        self._source_lock = threading.Lock()
        self._skipped: set[int] = set()  # ordered: indexes stopped before they were sent

        self._started = time.monotonic()
        self._succeeded = 0
        self._failed = 0
        self._retries = 0
        self._rate_limited = 0
        self._input_tokens = 0
        self._output_tokens = 0

    # -- the consumer's side ---------------------------------------------------------------------

    def __iter__(self) -> BatchRun:
        return self

    def __next__(self) -> BatchResult:
        if not self._workers and not self._closed:
            self._start_workers()
        with self._cond:
            while True:
                result = self._next_ready()
                if result is None and self._ending():
                    result = self._leftover()
                    if result is None:
                        self._closed = True  # whatever still finishes is dropped, never half-told
                        self._finish_display()
                        if self._source_error is not None:
                            # The caller's iterable failed: what was in flight was yielded first.
                            error, self._source_error = self._source_error, None
                            raise error
                        raise StopIteration
                if result is not None:
                    self._yielded += 1
                    self._count(result)
                    self._advance_skipped()
                    self._cond.notify_all()
                    break
                self._check_abort()
                self._cond.wait(0.1)
        self._report(result)
        return result

    def _next_ready(self) -> Optional[BatchResult]:
        if self._ordered:
            return self._by_index.pop(self._yielded, None)
        return self._ready.popleft() if self._ready else None

    def _ending(self) -> bool:
        """No more results will come: every worker exited, or the run was closed, or the
        grace period is over and the requests in flight were closed a moment ago (a worker
        waiting out a retry-after cannot be woken, and its request is not sent again)."""
        if self._closed or self._active == 0:
            return True
        abort_at = self._abort_at
        return abort_at is not None and time.monotonic() >= abort_at + ABORT_SETTLE

    def _leftover(self) -> Optional[BatchResult]:
        """At the end, an ordered run's results still waiting for an earlier index that will
        never come (stopped): lowest index first."""
        if self._closed or not self._by_index:
            return None
        return self._by_index.pop(min(self._by_index))

    @property
    def progress(self) -> BatchProgress:
        """Where the run stands now."""
        with self._cond:
            return BatchProgress(
                done=self._succeeded + self._failed,
                succeeded=self._succeeded,
                failed=self._failed,
                in_flight=len(self._watches),
                retries=self._retries,
                rate_limited=self._rate_limited,
                input_tokens=self._input_tokens,
                output_tokens=self._output_tokens,
                elapsed=time.monotonic() - self._started,
                concurrency=self._limit.limit,
            )

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Start no new request; those in flight may finish for ``grace`` seconds (keep
        iterating to get their results), then their connections are closed and the iteration
        ends. Safe from any thread and from a signal handler: it takes no lock the iterating
        thread may hold."""
        if (
            not isinstance(grace, (int, float))
            or isinstance(grace, bool)
            or not (grace >= 0 and math.isfinite(grace))
        ):
            raise ConfigurationError("grace must be a non-negative number of seconds")
        abort_at = time.monotonic() + grace
        current = self._abort_at
        if current is None or abort_at < current:
            self._abort_at = abort_at
        # Plain assignments only: the workers and the consumer look at these at least every
        # tenth of a second.
        self._stop_requested = True

    def close(self, grace: float = DEFAULT_GRACE) -> None:
        """``stop(grace)``, wait for the requests in flight (their results are dropped), and
        end the iteration. Idempotent."""
        self.stop(grace)
        deadline = (self._abort_at or time.monotonic()) + 1.0
        with self._cond:
            while self._watches and time.monotonic() < deadline:
                self._check_abort()
                self._cond.wait(0.05)
            self._closed = True
            self._ready.clear()
            self._by_index.clear()
            self._cond.notify_all()
        self._finish_display()

    def __repr__(self) -> str:
        p = self.progress
        return (
            f"<oaiws.BatchRun done={p.done} failed={p.failed} in_flight={p.in_flight} "
            f"concurrency={p.concurrency}/{self._concurrency}>"
        )

    # -- workers ---------------------------------------------------------------------------------

    def _start_workers(self) -> None:
        with self._cond:
            if self._workers:
                return
            self._active = self._concurrency
            run = weakref.ref(self)
            for number in range(self._concurrency):
                worker = threading.Thread(
                    target=_worker, args=(run,), name=f"oaiws-batch-{number}", daemon=True
                )
                self._workers.append(worker)
        for worker in self._workers:
            worker.start()

    def _work_once(self) -> Union[bool, threading.Condition]:
        """Take one request and run it: True when done with it, False when this worker is done,
        or the condition to wait on (without the run) while the window is full."""
        try:
            taken = self._take()
            if taken is _NO_ROOM:
                return self._cond
            if not isinstance(taken, tuple):
                self._worker_exits()
                return False
            index: int = taken[0]
            item: Any = taken[1]
            try:
                result = self._run_one(index, item)
            except Exception as bug:
                # Not an error of the request's: a defect. Logged with its traceback and
                # reported as this request's failure, so that no index goes missing.
                log.exception("batch: request %d failed unexpectedly", index)
                failure = OAIWSError(f"unexpected {type(bug).__name__} in the batch: {bug}")
                failure.__cause__ = bug
                result = BatchResult(index, None, None, failure, 0, 0.0)
            if result is not None:
                self._deliver(result)
            elif not self._closed:
                # Stopped before it was sent: nothing to report, nothing lost.
                self._deliver(None, index=index)
        except BaseException:
            self._worker_exits()
            raise
        return True

    def _worker_exits(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def _take(self) -> object:
        """``(index, item)``; ``None`` when there is nothing more to take; ``_NO_ROOM`` while
        the window is full."""
        with self._cond:
            if self._taken - self._yielded >= self._window:
                if self._stop_requested or self._closed:
                    return None
                return _NO_ROOM
            if self._stop_requested or self._source_done:
                return None
            # Counted before reading, so no other worker passes the window meanwhile.
            self._taken += 1
        with self._source_lock:
            try:
                taken = next(self._source, None)
            except BaseException as error:  # noqa: BLE001 - the caller's iterable failed: the run ends, the error reaches the caller
                taken = None
                with self._cond:
                    self._source_error = error
            if taken is None:
                with self._cond:
                    self._taken -= 1
                    self._source_done = True
                    self._cond.notify_all()
        return taken

    def _run_one(self, index: int, item: Any) -> Optional[BatchResult]:
        custom_id = item.get("custom_id") if isinstance(item, Mapping) else None
        custom_id = custom_id if isinstance(custom_id, str) else None
        try:
            custom_id, fields = request_fields(item)
            payload, _ = self._runtime.prepare(fields, None)
        except OAIWSError as refused:
            return BatchResult(index, custom_id, None, refused, 0, 0.0)
        started_round = self._limit.acquire(self._stopped)
        if started_round is None:
            return None
        tokens = estimate_tokens(payload)
        try:
            # Before the request's own timeout starts: waiting for its turn is not its time.
            self._wait_for_pace(tokens)
        except _Stopped:
            self._limit.release(rate_limited=False)
            return None
        watch = _Watch(self, tokens, started_round)
        with self._cond:
            self._watches.add(watch)
        response: Optional[Response] = None
        error: Optional[OAIWSError] = None
        try:
            response = collect_response(
                self._runtime,
                payload,
                timeout=self._timeout,
                channels=_WatchedChannels(self._runtime.router, watch),
                watch=watch,
            )
        except _Stopped:
            if watch.attempts == 0:
                return None  # never sent: a rerun sends it
            error = watch.last_error  # stopped before a retry: its last failure stands
        except OAIWSError as failure:
            error = failure
        finally:
            self._limit.release(rate_limited=watch.rate_limited)
            if response is not None and not watch.rate_limited:
                self._pacer.speed_up()
            with self._cond:
                self._watches.discard(watch)
                self._retries += max(0, watch.attempts - 1)
                self._cond.notify_all()
        if response is None and (watch.aborted or error is None):
            error = BatchStoppedError(
                "the batch was stopped and this request did not finish within the grace "
                "period: its connection was closed"
            )
        latency = time.monotonic() - watch.started if watch.attempts else 0.0
        return BatchResult(
            index, custom_id, response, error, watch.attempts, latency, watch.request_id
        )

    def _deliver(self, result: Optional[BatchResult], *, index: int = -1) -> None:
        with self._cond:
            if self._closed:
                return  # close() drops what finishes after it
            if result is None:
                # Nothing to yield for this index: an ordered run skips it.
                if self._ordered:
                    self._skipped.add(index)
                    self._advance_skipped()
                else:
                    self._yielded += 1
                self._cond.notify_all()
                return
            if self._ordered:
                self._by_index[result.index] = result
            else:
                self._ready.append(result)
            self._cond.notify_all()

    def _count(self, result: BatchResult) -> None:
        """Counted as it is yielded: a snapshot's ``done`` is what the caller has received."""
        if result.ok:
            self._succeeded += 1
        else:
            self._failed += 1
        usage = result.response.usage if result.response is not None else None
        if usage is not None:
            self._input_tokens += _int(usage.get("input_tokens"))
            self._output_tokens += _int(usage.get("output_tokens"))

    def _advance_skipped(self) -> None:
        while self._yielded in self._skipped:
            self._skipped.discard(self._yielded)
            self._yielded += 1

    # -- pacing and limits (called from workers) -------------------------------------------------

    def _stopped(self) -> bool:
        return self._stop_requested

    def _wait_for_pace(self, tokens: int) -> None:
        delay = self._pacer.reserve(tokens) - time.monotonic()
        if delay > 0 and self._sleep_unless_stopped(delay):
            raise _Stopped

    def _sleep_unless_stopped(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less when the run stops meanwhile: True if it did."""
        end = time.monotonic() + seconds
        while not self._stop_requested:
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, STOP_POLL))
        return True

    def _on_rate_limited(self, started_round: int, retry_after: Optional[float]) -> None:
        with self._cond:
            self._rate_limited += 1
        cut = self._limit.rate_limited(started_round)
        if cut:
            self._pacer.slow_down()
        if retry_after is not None and retry_after <= MAX_RETRY_AFTER:
            # A longer one is not honoured by the retry policy either (it backs off instead):
            # it would stall the whole run.
            self._pacer.pause(retry_after)
        if cut:
            log.info(
                "batch: rate limited (429); concurrency lowered to %d%s",
                self._limit.limit,
                f", pausing {retry_after:.2f}s" if retry_after is not None else "",
            )

    def _check_abort(self) -> None:
        abort_at = self._abort_at
        if abort_at is None or time.monotonic() < abort_at:
            return
        with self._cond:
            watches = list(self._watches)
        for watch in watches:
            watch.abort()

    # -- progress ---------------------------------------------------------------------------------

    def _report(self, result: BatchResult) -> None:
        if self._on_progress is None and self._progress_bar is None:
            return
        snapshot = self.progress
        if self._progress_bar is not None:
            advance_bar(self._progress_bar, snapshot)
        if self._on_progress is not None:
            self._on_progress(snapshot)

    def _finish_display(self) -> None:
        bar, self._progress_bar = self._progress_bar, None
        if bar is not None:
            bar.close()


_NO_ROOM = object()


def _worker(run_ref: weakref.ref[BatchRun]) -> None:
    """A worker's loop. It holds its run only while it takes or runs a request, so a run that
    its caller dropped unfinished is collected, and then its workers end; requests in flight
    finish first."""
    while True:
        run = run_ref()
        if run is None:
            return
        outcome = run._work_once()
        del run
        if outcome is False:
            return
        if outcome is not True:  # the window is full: wait for room, holding the run no more
            with outcome:
                outcome.wait(0.1)


def _progress_sinks(progress: Any) -> tuple[Any, Optional[ProgressCallback]]:
    if progress is None or progress is False:
        return None, None
    if progress is True:
        return tqdm_bar(), None
    if callable(progress):
        return None, progress
    raise ConfigurationError(
        "progress must be None, True (a tqdm bar) or a callable taking a BatchProgress"
    )


def tqdm_bar(**options: Any) -> Any:
    """A ``tqdm`` progress bar on stderr; ``ConfigurationError`` when tqdm is not installed."""
    try:
        from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415
    except ImportError:
        raise ConfigurationError("progress=True needs tqdm: pip install 'oaiws[cli]'") from None
    return tqdm(unit="req", dynamic_ncols=True, **options)


def advance_bar(bar: Any, progress: BatchProgress) -> None:
    """One more result on a tqdm bar, with failures, requests in flight and tokens."""
    bar.update(1)
    bar.set_postfix(
        failed=progress.failed,
        in_flight=progress.in_flight,
        tokens=progress.input_tokens + progress.output_tokens,
        refresh=False,
    )


def check_count(name: str, value: Any) -> None:
    """``ConfigurationError`` unless ``value`` is a positive integer (``name`` says which)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, not {value!r}")


def check_positive(name: str, value: Any) -> None:
    """``ConfigurationError`` unless ``value`` is a positive finite number."""
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not (value > 0 and math.isfinite(value))
    ):
        raise ConfigurationError(f"{name} must be a positive number, not {value!r}")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
