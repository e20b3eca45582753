"""The ``oaiws batch`` subcommand: an OpenAI Batch API file, done now over warm connections.

    oaiws batch requests.jsonl --output results.jsonl

Every line of the input is checked before anything is sent. Results are appended to the output
(successes) and the errors file (failures) one whole line at a time; running the same command
again skips what already succeeded and retries the rest. Ctrl-C stops promptly (exit 130).
Exit status: 0 every request succeeded, 1 some failed (see the errors file), 2 bad usage or
input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import statistics
import sys
import threading
from array import array
from types import FrameType
from typing import Any, Optional, TextIO

from ._batchfile import (
    ResultWriter,
    Shard,
    check_input,
    compact_errors,
    default_errors_path,
    read_requests,
    spool_stdin,
    succeeded_ids,
)
from ._client import Client
from .batch import (
    BatchProgress,
    BatchRun,
    advance_bar,
    check_count,
    check_positive,
    tqdm_bar,
)
from .errors import ConfigurationError, OAIWSError

__all__ = ["register", "run"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser: argparse.ArgumentParser = commands.add_parser(
        "batch",
        help="run an OpenAI Batch API file (JSONL) now, over the WebSocket pool",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("input", metavar="INPUT", help="the Batch API file, or - for standard input")
    add("--output", "-o", required=True, help="results, appended (also what a rerun resumes)")
    add("--errors", help="failed requests (default: OUTPUT with .errors before its extension)")
    add("--concurrency", type=int, default=16, help="requests in flight (default %(default)s)")
    add("--max-requests-per-minute", type=float, metavar="R", help="spread starts under R/min")
    add(
        "--max-tokens-per-minute",
        type=float,
        metavar="T",
        help="spread starts under T tokens/min (input bytes / 4 + max_output_tokens)",
    )
    add("--shard", default="0/1", metavar="K/N", help="run part K (0..N-1) of N (default 0/1)")
    add("--no-progress", action="store_true", help="no progress bar or progress lines")
    add(
        "--progress-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between progress lines when stderr is not a terminal (default %(default)s)",
    )
    add(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="on Ctrl-C, how long requests in flight may finish (default %(default)s)",
    )
    add("--timeout", type=float, help="seconds each request may take in all (default: none)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, err: Optional[TextIO] = None) -> int:
    err = err if err is not None else sys.stderr
    try:
        shard = Shard.parse(args.shard)
        check_count("--concurrency", args.concurrency)
        check_positive("--progress-interval", args.progress_interval)
        for flag, value in (
            ("--max-requests-per-minute", args.max_requests_per_minute),
            ("--max-tokens-per-minute", args.max_tokens_per_minute),
            ("--timeout", args.timeout),
        ):
            if value is not None:
                check_positive(flag, value)
        if not (args.grace >= 0 and math.isfinite(args.grace)):
            raise ConfigurationError("--grace must be a non-negative number of seconds")
    except ConfigurationError as error:
        err.write(f"oaiws batch: {error}\n")
        return EXIT_USAGE
    errors_path = args.errors or default_errors_path(args.output)
    spooled = None
    try:
        path = args.input
        if path == "-":
            path = spooled = spool_stdin(sys.stdin.buffer)
        elif not os.path.isfile(path):
            err.write(f"oaiws batch: {path}: no such file\n")
            return EXIT_USAGE
        return _run_file(args, path, errors_path, shard, err)
    finally:
        if spooled is not None:
            with contextlib.suppress(OSError):
                os.unlink(spooled)


def _run_file(
    args: argparse.Namespace, path: str, errors_path: str, shard: Shard, err: TextIO
) -> int:
    check = check_input(path, shard)
    if check.problem_count:
        for problem in check.problems:
            err.write(f"{args.input}: {problem}\n")
        hidden = check.problem_count - len(check.problems)
        if hidden:
            err.write(f"... and {hidden} more\n")
        err.write("oaiws batch: nothing was sent\n")
        return EXIT_USAGE
    try:
        already = succeeded_ids(args.output)
        client = Client(max_connections=args.concurrency)
        client.config.require_api_key()
    except ConfigurationError as error:
        err.write(f"oaiws batch: {error}\n")
        return EXIT_USAGE
    todo = check.requests - sum(1 for custom_id in already if shard.holds(custom_id))
    if already:
        err.write(f"resuming: {len(already)} already succeeded, {todo} to run\n")
    writer = ResultWriter(args.output, errors_path)
    summary = _Summary()
    interrupted = False
    try:
        with client:
            run = client.batch(
                read_requests(path, shard, already),
                concurrency=args.concurrency,
                max_requests_per_minute=args.max_requests_per_minute,
                max_tokens_per_minute=args.max_tokens_per_minute,
                timeout=args.timeout,
            )
            display = _Display(
                run, todo, err, enabled=not args.no_progress, interval=args.progress_interval
            )
            with _sigint_stops(run, args.grace, err) as sigint:
                try:
                    for result in run:
                        if writer.write(result):
                            summary.add(result.latency, ok=result.ok)
                        display.advance()
                finally:
                    display.close()
                    interrupted = sigint.stopped
            progress = run.progress
    except OAIWSError as error:
        err.write(f"oaiws batch: {error}\n")
        return EXIT_USAGE
    finally:
        writer.close()
        still_failing = compact_errors(errors_path, already | writer.succeeded)
    summary.report(err, progress, still_failing, errors_path)
    if interrupted:
        err.write("interrupted: run the same command again to resume\n")
        return EXIT_INTERRUPTED
    return EXIT_FAILED if still_failing or summary.failed else EXIT_OK


class _sigint_stops:
    """Ctrl-C stops the run (no new requests, ``grace`` seconds for those in flight); a second
    one closes what is still in flight at once. The previous handler comes back on exit."""

    def __init__(self, run: BatchRun, grace: float, err: TextIO) -> None:
        self._run = run
        self._grace = grace
        self._err = err
        self.stopped = False
        self._previous: Any = None

    def __enter__(self) -> _sigint_stops:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum: int, frame: Optional[FrameType]) -> None:
        # Only assignments and the run's lock-free stop(): the main thread may hold any lock.
        first = not self.stopped
        self.stopped = True
        self._run.stop(self._grace if first else 0.0)
        if first:
            # Straight to the file descriptor: the stream's buffer may be in the middle of a
            # write of the main thread's (a progress bar), and it is not reentrant.
            message = (
                f"\nstopping: no new requests; those in flight get {self._grace:g}s"
                " (Ctrl-C again to stop at once)\n"
            )
            with contextlib.suppress(OSError, ValueError, AttributeError):
                os.write(self._err.fileno(), message.encode())


class _Display:
    """A tqdm bar on a terminal (``oaiws[cli]``), else a progress line every ``interval``."""

    def __init__(
        self, run: BatchRun, total: int, err: TextIO, *, enabled: bool, interval: float
    ) -> None:
        self._run = run
        self._err = err
        self._bar: Any = None
        self._done = threading.Event()
        self._ticker: Optional[threading.Thread] = None
        if not enabled:
            return
        if err.isatty():
            try:
                self._bar = tqdm_bar(total=total, file=err)
                return
            except ConfigurationError:
                err.write("(pip install 'oaiws[cli]' for a progress bar)\n")
        self._ticker = threading.Thread(
            target=self._tick, args=(interval,), name="oaiws-batch-progress", daemon=True
        )
        self._ticker.start()

    def advance(self) -> None:
        bar = self._bar
        if bar is None:
            return
        advance_bar(bar, self._run.progress)

    def _tick(self, interval: float) -> None:
        while not self._done.wait(interval):
            p = self._run.progress
            self._err.write(
                f"progress: {p.done} done ({p.failed} failed), {p.in_flight} in flight,"
                f" {p.requests_per_second:.1f} req/s, {p.input_tokens} tokens in,"
                f" {p.output_tokens} out\n"
            )
            self._err.flush()

    def close(self) -> None:
        self._done.set()
        if self._bar is not None:
            self._bar.close()
        if self._ticker is not None:
            self._ticker.join(1.0)


class _Summary:
    def __init__(self) -> None:
        self.latencies = array("d")
        self.succeeded = 0
        self.failed = 0

    def add(self, latency: float, *, ok: bool) -> None:
        if ok:
            self.succeeded += 1
            self.latencies.append(latency)
        else:
            self.failed += 1

    def report(
        self, err: TextIO, progress: BatchProgress, still_failing: int, errors_path: str
    ) -> None:
        p50 = p95 = float("nan")
        if len(self.latencies) >= 2:
            cuts = statistics.quantiles(self.latencies, n=20, method="inclusive")
            p50, p95 = statistics.median(self.latencies), cuts[18]
        elif self.latencies:
            p50 = p95 = self.latencies[0]
        err.write(
            f"done: {self.succeeded} succeeded, {self.failed} failed in {progress.elapsed:.1f}s;"
            f" tokens {progress.input_tokens} in, {progress.output_tokens} out;"
            f" latency p50 {_ms(p50)}, p95 {_ms(p95)}; {progress.retries} retries,"
            f" {progress.rate_limited} rate limited (429)\n"
        )
        if still_failing:
            err.write(f"{still_failing} request(s) failing: see {errors_path}\n")


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"
