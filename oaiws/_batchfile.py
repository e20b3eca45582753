"""Batch API files for ``oaiws batch``: reading and checking the input, sharding, writing
results line by line, and resuming from what an earlier run wrote.

Input, one JSON object per line (blank lines are skipped)::

    {"custom_id": "q1", "method": "POST", "url": "/v1/responses",
     "body": {"model": ..., "input": ...}}

Output, one line per request, the Batch API's output format::

    {"id": "batch_req_...", "custom_id": "q1",
     "response": {"status_code": 200, "request_id": "...", "body": {...the response...}},
     "error": null}

A request the server refused has its status and the error body under ``response``; one
that got no answer (a timeout, a lost connection) has ``response: null`` and ``error``
``{"code", "message"}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Optional

from ._payload import build_payload
from .batch import BatchResult, request_fields
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    BatchStoppedError,
    ConfigurationError,
    ProtocolError,
)

__all__ = [
    "InputCheck",
    "ResultWriter",
    "Shard",
    "check_input",
    "compact_errors",
    "default_errors_path",
    "drop_cut_line",
    "read_requests",
    "result_line",
    "spool_stdin",
    "succeeded_ids",
]

# Messages shown for a bad input file; the count of the rest is given after them.
MAX_SHOWN_PROBLEMS = 20


@dataclass(frozen=True)
class Shard:
    """The ``index``-th (from 0) of ``count`` disjoint parts of a file, by a stable hash of
    each ``custom_id``: the same on every machine and Python version."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            index_text, count_text = text.split("/")
            index, count = int(index_text), int(count_text)
        except ValueError:
            raise ConfigurationError(
                f"--shard must be K/N (K from 0 to N-1), not {text!r}"
            ) from None
        if count < 1 or not 0 <= index < count:
            raise ConfigurationError(f"--shard {text}: K must be in 0..{max(0, count - 1)}")
        return cls(index, count)

    def holds(self, custom_id: str) -> bool:
        if self.count == 1:
            return True
        # surrogatepass: a custom_id with a lone surrogate escape still has a shard.
        digest = hashlib.sha256(custom_id.encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


@dataclass
class InputCheck:
    """What checking a whole input file found."""

    requests: int = 0  # valid lines in this shard
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    def problem(self, line_number: int, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_SHOWN_PROBLEMS:
            self.problems.append(f"line {line_number}: {message}")


def spool_stdin(stream: IO[bytes], directory: Optional[str] = None) -> str:
    """Copy standard input to a temporary file (it is read twice: checked, then sent)."""
    handle, path = tempfile.mkstemp(prefix="oaiws-batch-", suffix=".jsonl", dir=directory)
    with os.fdopen(handle, "wb") as spooled:
        shutil.copyfileobj(stream, spooled)
    return path


def _lines(path: str) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="strict") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield number, line


def check_input(path: str, shard: Shard) -> InputCheck:
    """Check every line before anything is sent: JSON, ``custom_id`` present and unique in
    the whole file, ``method`` and ``url``, and the body as ``response.create`` fields."""
    check = InputCheck()
    first_seen: dict[str, int] = {}
    try:
        for number, line in _lines(path):
            try:
                item = json.loads(line)
            except ValueError as error:
                check.problem(number, f"invalid JSON ({error})")
                continue
            if not isinstance(item, dict):
                check.problem(number, "not a JSON object")
                continue
            if "custom_id" not in item:
                check.problem(number, "custom_id is missing")
                continue
            try:
                custom_id, fields = request_fields(item)
                build_payload(fields)
            except ConfigurationError as error:
                check.problem(number, str(error))
                continue
            assert custom_id is not None
            earlier = first_seen.setdefault(custom_id, number)
            if earlier != number:
                check.problem(
                    number, f"duplicate custom_id {custom_id!r} (first on line {earlier})"
                )
                continue
            if shard.holds(custom_id):
                check.requests += 1
    except UnicodeDecodeError as error:
        check.problem(0, f"the file is not UTF-8 ({error.reason} at byte {error.start})")
    return check


def read_requests(path: str, shard: Shard, skip: set[str]) -> Iterator[dict[str, Any]]:
    """The checked lines of this shard, lazily, without those in ``skip``."""
    for _, line in _lines(path):
        item = json.loads(line)
        custom_id = item["custom_id"]
        if custom_id not in skip and shard.holds(custom_id):
            yield item


def succeeded_ids(output_path: str) -> set[str]:
    """The ``custom_id`` of every line already in the output (every one succeeded).

    A last line cut short (the machine died mid-write) is removed first, so the file holds
    whole lines only and that request runs again."""
    done: set[str] = set()
    if not drop_cut_line(output_path):
        return done
    with open(output_path, "rb") as output:
        for raw in output:
            try:
                custom_id = json.loads(raw)["custom_id"]
            except (ValueError, KeyError, TypeError):
                raise ConfigurationError(
                    f"{output_path} has a line that is not an oaiws batch result: use another"
                    " --output, or remove that line"
                ) from None
            done.add(custom_id)
    return done


def drop_cut_line(path: str) -> bool:
    """Remove a last line without its newline (a write cut short), so that what is appended
    next starts a line of its own. False when there is no such file."""
    if not os.path.exists(path):
        return False
    with open(path, "rb+") as lines:
        lines.seek(0, os.SEEK_END)
        size = end = lines.tell()
        while end > 0:
            step = min(end, 65536)
            lines.seek(end - step)
            block = lines.read(step)
            newline = block.rfind(b"\n")
            if newline != -1:
                end = end - step + newline + 1
                break
            end -= step
        if end != size:
            lines.truncate(end)
    return True


def compact_errors(errors_path: str, succeeded: set[str]) -> int:
    """Rewrite the errors file to hold one line per request still failing (its latest), and
    nothing for those that succeeded since. Returns the lines kept. Atomic: a crash leaves
    the old file or the new one."""
    if not os.path.exists(errors_path):
        return 0
    latest: dict[str, bytes] = {}
    with open(errors_path, "rb") as errors:
        for raw in errors:
            if not raw.endswith(b"\n"):
                continue  # cut short: that request is not in the output, so it runs again
            try:
                custom_id = json.loads(raw)["custom_id"]
            except (ValueError, KeyError, TypeError):
                continue
            latest.pop(custom_id, None)  # keep input order of the latest failures
            latest[custom_id] = raw
    directory = os.path.dirname(os.path.abspath(errors_path))
    handle, temporary = tempfile.mkstemp(prefix=".oaiws-errors-", dir=directory)
    kept = 0
    try:
        with os.fdopen(handle, "wb") as compacted:
            for custom_id, raw in latest.items():
                if custom_id not in succeeded:
                    compacted.write(raw)
                    kept += 1
        os.replace(temporary, errors_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return kept


class ResultWriter:
    """Appends each result as one whole line, flushed at once: output for successes, errors
    for failures. A request stopped before it finished is written nowhere (it runs again)."""

    def __init__(self, output_path: str, errors_path: str) -> None:
        self.output_path = output_path
        self.errors_path = errors_path
        drop_cut_line(errors_path)  # its failures then count again: not in the output
        self._output: IO[str] = open(output_path, "a", encoding="utf-8")  # noqa: SIM115
        self._errors: Optional[IO[str]] = None
        self.succeeded: set[str] = set()

    def write(self, result: BatchResult) -> bool:
        """Write ``result``; False when it is not written (stopped before it finished)."""
        if isinstance(result.error, BatchStoppedError):
            return False
        # ASCII escapes: whatever the server sent (even a lone surrogate) can be written.
        line = json.dumps(result_line(result), separators=(",", ":"))
        if result.ok:
            target = self._output
            if result.custom_id is not None:
                self.succeeded.add(result.custom_id)
        else:
            if self._errors is None:
                self._errors = open(self.errors_path, "a", encoding="utf-8")  # noqa: SIM115
            target = self._errors
        target.write(line + "\n")  # one call: a signal never lands between its halves
        target.flush()
        return True

    def close(self) -> None:
        self._output.close()
        if self._errors is not None:
            self._errors.close()


def result_line(result: BatchResult) -> dict[str, Any]:
    """One line of the Batch API's output format."""
    response: Optional[dict[str, Any]] = None
    error: Optional[dict[str, Any]] = None
    failure = result.error
    if result.response is not None:
        response = {
            "status_code": 200,
            "request_id": result.request_id,
            "body": result.response.to_dict(),
        }
        if not result.ok:
            reported = result.response.get("error")
            message = reported.get("message") if hasattr(reported, "get") else None
            error = {"code": "response_failed", "message": message or "the response failed"}
    elif isinstance(failure, APIStatusError):
        response = {
            "status_code": failure.status_code,
            "request_id": failure.request_id,
            "body": {
                "error": {
                    "message": failure.message,
                    "type": failure.type,
                    "param": failure.param,
                    "code": failure.code,
                }
            },
        }
    else:
        error = {"code": _error_code(failure), "message": str(failure)}
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": result.custom_id,
        "response": response,
        "error": error,
    }


def _error_code(error: Optional[BaseException]) -> str:
    if isinstance(error, APITimeoutError):
        return "timeout"
    if isinstance(error, APIConnectionError):
        return "connection_error"
    if isinstance(error, ProtocolError):
        return "protocol_error"
    if isinstance(error, ConfigurationError):
        return "invalid_request"
    return "error"


def default_errors_path(output_path: str) -> str:
    """Next to the output: ``results.jsonl`` -> ``results.errors.jsonl``."""
    root, extension = os.path.splitext(output_path)
    return f"{root}.errors{extension or '.jsonl'}"
