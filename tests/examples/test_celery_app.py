"""examples/celery_app.py works in a real prefork worker: every child answers with its own
pool, a 429 is retried by Celery after ``retry_after``, other errors fail the task.

One worker (two children) serves the whole module, against an in-process emulator; the tasks
are sent from here through the same file broker. Celery is in the test extra; without it
these skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("celery")

from celerysupport import Worker, load_example, running_worker

import oaiws
from oaiws.testing import Emulator, Fault, expected_text

# Every answer takes this long, so that tasks sent together keep both children busy.
FIRST_EVENT_DELAY = 0.2
RESULT_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(first_event_delay=FIRST_EVENT_DELAY) as emu:
        yield emu


@pytest.fixture(scope="module")
def celery_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("celery")


@pytest.fixture(scope="module")
def example(celery_dir: Path) -> Iterator[ModuleType]:
    module = load_example(celery_dir)
    try:
        yield module
    finally:
        module.client.close()  # never used here: the tasks run in the worker
        module.app.close()


@pytest.fixture(scope="module")
def worker(emulator: Emulator, celery_dir: Path, example: ModuleType) -> Iterator[Worker]:
    with running_worker(emulator, celery_dir, celery_dir / "worker.log") as running:
        yield running


@pytest.fixture
def emu(emulator: Emulator, worker: Worker) -> Iterator[Emulator]:
    """The module's emulator, with no fault left over from another test."""
    emulator.clear_faults()
    yield emulator
    emulator.clear_faults()


def _delta(before: dict[str, Any], after: dict[str, Any], key: str) -> int:
    return int(after[key] - before[key])


def test_both_children_answer_each_with_its_own_connection(
    emu: Emulator, worker: Worker, example: ModuleType
) -> None:
    prompts = [f"Question {n} for the workers" for n in range(8)]
    results = [example.ask.delay(prompt) for prompt in prompts]
    for prompt, result in zip(prompts, results):
        assert result.get(timeout=RESULT_TIMEOUT, interval=0.05) == expected_text(input=prompt)

    lines = worker.wait_for_outcomes([result.id for result in results], "succeeded")
    assert len({line["process"] for line in lines}) == 2, lines  # both children served

    # Fork safety: the parent warmed its pool before the fork (celeryprefork.py). Had a child
    # used the inherited socket, answers would have crossed or failed; instead every child
    # that ever ran a task opened exactly one connection of its own, and none was closed
    # (a child closing what it inherited would have closed the parent's connection).
    children = {line["process"] for line in worker.task_lines()}
    stats = emu.stats()
    assert stats["handshakes"] == 1 + len(children), (stats, children)
    assert stats["connections_open"] == stats["handshakes"], stats


def test_a_rate_limit_is_retried_by_celery_after_retry_after(
    emu: Emulator, worker: Worker, example: ModuleType
) -> None:
    before = emu.stats()
    emu.inject(Fault(error_code="rate_limit_exceeded", retry_after=1))
    result = example.ask.delay("Limited, then answered")
    assert result.get(timeout=RESULT_TIMEOUT, interval=0.05) == expected_text(
        input="Limited, then answered"
    )

    after = emu.stats()
    assert _delta(before, after, "errors_sent") == 1  # the 429
    assert _delta(before, after, "faults_applied") == 1
    assert _delta(before, after, "requests") == 2  # the client did not retry: Celery did
    (retry,) = worker.wait_for_outcomes([result.id], "retry")
    assert "Retry in 1.0s: RateLimitError" in retry["rest"], retry
    refused, answered = emu.request_times()[-2:]
    assert answered - refused >= 0.95  # retry_after was honoured


def test_a_rate_limit_that_persists_fails_after_max_retries(
    emu: Emulator, worker: Worker, example: ModuleType
) -> None:
    before = emu.stats()
    tries = 1 + example.MAX_RETRIES
    # retry_after=0: the retries come back at once, so the budget is spent quickly.
    emu.inject(Fault(error_code="rate_limit_exceeded", retry_after=0), times=tries)
    result = example.ask.delay("Limited for good")
    with pytest.raises(oaiws.RateLimitError):
        result.get(timeout=RESULT_TIMEOUT, interval=0.05)

    assert _delta(before, emu.stats(), "requests") == tries
    retries = [line for line in worker.task_lines() if line["id"] == result.id]
    assert [line["outcome"] for line in retries].count("retry") == example.MAX_RETRIES


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("insufficient_quota", oaiws.RateLimitError),  # a 429 no pause cures
        ("invalid_request_error", oaiws.BadRequestError),
    ],
)
def test_other_errors_fail_the_task_at_once(
    emu: Emulator, worker: Worker, example: ModuleType, code: str, error: type[Exception]
) -> None:
    before = emu.stats()
    emu.inject(Fault(error_code=code))
    result = example.ask.delay(f"Refused with {code}")
    with pytest.raises(error):
        result.get(timeout=RESULT_TIMEOUT, interval=0.05)

    assert _delta(before, emu.stats(), "requests") == 1
    (line,) = worker.wait_for_outcomes([result.id], "raised")
    assert line["task"] == "celery_app.ask"
