"""``client.batch`` over real sockets: answers, failures as results, order, pacing measured by
the emulator's clock, AIMD under an emulated limit, stopping, and bad arguments."""

from __future__ import annotations

import gc
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from batchsupport import batch_line

import oaiws
from oaiws import BatchProgress, BatchResult, BatchStoppedError, ConfigurationError, _retry
from oaiws import batch as batch_module
from oaiws.testing import Emulator, Fault


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(deltas=3) as emu:
        yield emu


def client_on(emu: Any, **options: Any) -> oaiws.Client:
    return oaiws.Client(api_key=emu.api_key, base_url=emu.base_url, **options)


def questions(count: int, **fields: Any) -> list[dict[str, Any]]:
    return [{"model": "gpt-test", "input": f"question {i}", **fields} for i in range(count)]


def test_every_request_gets_exactly_its_own_answer_through_drops_and_429s(
    emulator: Emulator,
) -> None:
    requests = [batch_line(f"q{i}") for i in range(120)]
    with client_on(emulator, max_connections=8, max_retries=4) as client:
        expected = {
            line["custom_id"]: client.create_response(**line["body"]).output_text
            for line in requests
        }
        emulator.inject(Fault(close_after_events=2), times=6)
        emulator.inject(Fault(error_code="rate_limit_exceeded", retry_after=0.05), times=6)
        emulator.inject(Fault(error_code="server_error"), times=4)
        results = list(client.batch(requests, concurrency=8))
    assert sorted(r.index for r in results) == list(range(120))
    assert all(r.ok and r.error is None for r in results), [r.error for r in results]
    assert {r.custom_id: r.response.output_text for r in results if r.response} == expected
    assert sum(r.attempts for r in results) == 120 + 16  # one more try per fault
    assert all(r.latency > 0 for r in results)


def test_failures_are_results_and_the_run_goes_on(emulator: Emulator) -> None:
    requests: list[Any] = [
        {"model": "gpt-test", "input": "fine"},
        {"model": "gpt-test"},  # refused before sending
        {"model": "gpt-test@outcome=failed", "input": "x"},  # the model fails
        "not a request",
        {"model": "gpt-test", "input": "also fine"},
    ]
    with client_on(emulator, max_retries=0) as client:
        emulator.reset_stats()
        emulator.inject(Fault(error_code="invalid_request_error", error_status=400))
        results = sorted(client.batch(requests, concurrency=1), key=lambda r: r.index)
    assert [r.ok for r in results] == [False, False, False, False, True]
    assert isinstance(results[0].error, oaiws.BadRequestError)
    assert results[0].error.status_code == 400 and results[0].attempts == 1
    assert isinstance(results[1].error, ConfigurationError) and results[1].attempts == 0
    assert results[2].error is None and results[2].response is not None
    assert results[2].response.status == "failed"
    assert isinstance(results[3].error, ConfigurationError)
    assert emulator.stats()["requests"] == 3  # the two refused ones never reached it


def test_ordered_yields_in_input_order_within_a_bounded_window(emulator: Emulator) -> None:
    # Earlier requests take longer, so completion order is the reverse of input order.
    delays = [240 - 8 * i for i in range(30)]
    taken: list[int] = []
    consumed = [0]
    lead: list[int] = []

    def source() -> Iterator[dict[str, Any]]:
        for i, delay in enumerate(delays):
            taken.append(i)
            lead.append(len(taken) - consumed[0])
            yield {
                "model": "gpt-test",
                "input": f"q{i}",
                "metadata": {"emulator_first_event_delay_ms": str(delay)},
            }

    with client_on(emulator, max_connections=4) as client:
        unordered = [r.index for r in client.batch(source(), concurrency=4)]
        taken.clear()
        lead.clear()
        ordered: list[int] = []
        for result in client.batch(source(), concurrency=4, ordered=True):
            ordered.append(result.index)
            consumed[0] += 1
    assert unordered != list(range(30))
    assert ordered == list(range(30))
    assert max(lead) <= 4 * 4 + 1  # never more than the window taken ahead of the consumer


def test_requests_are_spread_evenly_under_a_requests_per_minute_budget() -> None:
    with Emulator(deltas=2, max_requests_per_minute=1200) as emu:  # 20/s, enforced
        with client_on(emu, max_connections=8) as client:
            results = list(client.batch(questions(41), concurrency=8, max_requests_per_minute=1200))
        arrivals = emu.request_times()
        assert emu.stats()["rate_limited"] == 0
    assert all(r.ok for r in results)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    span = arrivals[-1] - arrivals[0]
    assert 1.9 <= span <= 2.6  # 40 intervals of 50 ms: the budget, not a burst and a wait
    assert statistics.median(gaps) == pytest.approx(0.05, abs=0.01)
    assert max(sum(1 for t in arrivals if start <= t < start + 0.5) for start in arrivals) <= 12


def test_tokens_are_spread_by_their_estimate_under_a_tokens_per_minute_budget() -> None:
    fields = {"max_output_tokens": 50}  # each request: 3-4 input tokens + 50 reserved
    with Emulator(deltas=2, max_tokens_per_minute=60_000) as emu:  # 1,000 tokens/s
        with client_on(emu, max_connections=8) as client:
            results = list(
                client.batch(questions(40, **fields), concurrency=8, max_tokens_per_minute=60_000)
            )
        arrivals = emu.request_times()
        charged = emu.stats()["rate_limit_tokens"]
        assert emu.stats()["rate_limited"] == 0
    assert all(r.ok for r in results)
    rate = charged / (arrivals[-1] - arrivals[0])
    assert 850 <= rate <= 1080  # tokens per second, as the emulator charged them


def test_aimd_settles_under_a_limit_it_was_not_told() -> None:
    # 20 requests/s enforced; a response takes about 0.2 s, so about 4 in flight keep it busy.
    seen: list[BatchProgress] = []
    with Emulator(deltas=2, first_event_delay=0.2, max_requests_per_minute=1200) as emu:
        with client_on(emu, max_connections=16, max_retries=8) as client:
            started = time.monotonic()
            results = list(client.batch(questions(160), concurrency=16, progress=seen.append))
            elapsed = time.monotonic() - started
        refused = emu.stats()["rate_limited"]
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    lowest = min(p.concurrency for p in seen)
    assert lowest <= 8  # cut by half at least once
    assert seen[-1].concurrency > lowest  # and grown back
    assert seen[-1].rate_limited == refused > 0
    assert refused < 0.25 * len(results)  # a few probes, not a storm
    assert 160 / elapsed >= 0.7 * 20  # close to the limit


def test_stop_starts_nothing_new_and_yields_what_was_in_flight(emulator: Emulator) -> None:
    slow = {"metadata": {"emulator_first_event_delay_ms": "300"}}
    with client_on(emulator, max_connections=4) as client:
        emulator.reset_stats()
        run = client.batch(questions(100, **slow), concurrency=4)
        first = next(run)
        run.stop(grace=10)
        stopped_at = time.monotonic()
        rest = list(run)
        arrivals = emulator.request_times()
        assert client.create_response(model="gpt-test", input="after").status == "completed"
    assert first.ok and all(r.ok for r in rest)
    assert 1 + len(rest) == len(arrivals)  # everything sent was yielded
    # Nothing was sent after stop(): 50 ms covers a request sent just before it on its way.
    assert [t for t in arrivals if t > stopped_at + 0.05] == []
    assert len(rest) >= 1


def stopped_after(run: oaiws.BatchRun, seconds: float, grace: float) -> tuple[list[Any], float]:
    """Iterate ``run`` to its end while another thread calls ``stop(grace)`` after
    ``seconds``: the results, and how long the iteration took."""
    timer = threading.Timer(seconds, run.stop, kwargs={"grace": grace})
    started = time.monotonic()
    timer.start()
    try:
        results = list(run)
    finally:
        timer.join()
    return results, time.monotonic() - started


def batch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("oaiws-batch-")]


@pytest.mark.parametrize("transport", ["websocket", "http"])
def test_after_the_grace_period_requests_in_flight_are_closed(
    emulator: Emulator, transport: str
) -> None:
    stuck = {"metadata": {"emulator_first_event_delay_ms": "20000"}}
    with client_on(emulator, max_connections=3, transport=transport) as client:
        run = client.batch(questions(3, **stuck), concurrency=3)
        results, elapsed = stopped_after(run, 0.5, grace=0.3)
        deadline = time.monotonic() + 5
        while batch_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert batch_threads() == []
        assert client.pool_stats()["connections_in_use"] == 0
        assert client.create_response(model="gpt-test", input="after").status == "completed"
    assert elapsed < 5
    assert len(results) == 3
    assert all(isinstance(r.error, BatchStoppedError) for r in results)


def test_close_ends_the_run_and_drops_what_finishes_later(emulator: Emulator) -> None:
    slow = {"metadata": {"emulator_first_event_delay_ms": "200"}}
    with client_on(emulator, max_connections=2) as client:
        with client.batch(questions(50, **slow), concurrency=2) as run:
            next(run)
        assert list(run) == []
        assert run.progress.in_flight == 0


def test_an_iterable_that_fails_ends_the_run_with_its_error(emulator: Emulator) -> None:
    def source() -> Iterator[dict[str, Any]]:
        yield from questions(5)
        raise KeyError("the input broke")

    with client_on(emulator) as client:
        run = client.batch(source(), concurrency=2)
        got: list[BatchResult] = []
        with pytest.raises(KeyError, match="the input broke"):
            for result in run:
                got.append(result)
    assert sorted(r.index for r in got) == [0, 1, 2, 3, 4]


def test_progress_as_a_bar_and_as_a_callback(
    emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[BatchProgress] = []
    with client_on(emulator) as client:
        list(client.batch(questions(5), progress=True))
        list(client.batch(questions(5), progress=seen.append))
    assert "5req" in capsys.readouterr().err.replace(" ", "")  # tqdm's count, on stderr
    assert [p.done for p in seen] == [1, 2, 3, 4, 5]
    assert seen[-1].succeeded == 5 and seen[-1].output_tokens > 0
    assert seen[-1].requests_per_second > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"max_requests_per_minute": 0}, "max_requests_per_minute"),
        ({"max_tokens_per_minute": float("nan")}, "max_tokens_per_minute"),
        ({"ordered": "yes"}, "ordered"),
        ({"progress": "bar"}, "progress"),
        ({"timeout": -1}, "timeout"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_sent(
    emulator: Emulator, options: dict[str, Any], message: str
) -> None:
    with client_on(emulator) as client:
        emulator.reset_stats()
        with pytest.raises(ConfigurationError, match=message):
            client.batch(questions(3), **options)
        with pytest.raises(ConfigurationError, match="iterable"):
            client.batch(5)  # type: ignore[arg-type]
    assert emulator.stats()["requests"] == 0


def test_a_run_dropped_unfinished_ends_its_workers_and_frees_the_pool(emulator: Emulator) -> None:
    slow = {"metadata": {"emulator_first_event_delay_ms": "30"}}
    with client_on(emulator, max_connections=4) as client:
        emulator.reset_stats()
        run = client.batch(questions(1000, **slow), concurrency=4)
        first = [next(run) for _ in range(3)]
        assert len(batch_threads()) == 4
        del run  # no close(), no with: a caller who forgot
        gc.collect()
        deadline = time.monotonic() + 10
        while batch_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert batch_threads() == []
        assert client.pool_stats()["connections_in_use"] == 0
        sent = emulator.stats()["requests"]
    assert all(r.ok for r in first)
    assert sent <= 3 + 4 * 4 + 4  # what it had taken ahead: the window, and those in flight


class TypedMessage:
    """An input item as the openai package types them: ``model_dump()``, nothing JSON knows."""

    def __init__(self, text: str) -> None:
        self.text = text

    def model_dump(self, exclude_none: bool = False) -> dict[str, Any]:
        return {"role": "user", "content": self.text}


@pytest.mark.parametrize("ordered", [False, True])
def test_typed_input_items_are_estimated_paced_and_answered(
    emulator: Emulator, ordered: bool
) -> None:
    requests = [{"model": "gpt-test", "input": [TypedMessage(f"q{i}")]} for i in range(12)]
    with client_on(emulator, max_connections=4) as client:
        results = list(
            client.batch(requests, concurrency=4, ordered=ordered, max_tokens_per_minute=600_000)
        )
    assert sorted(r.index for r in results) == list(range(12))
    assert all(r.ok for r in results), [r.error for r in results]


def test_waiting_for_its_turn_does_not_count_against_a_requests_timeout(
    emulator: Emulator,
) -> None:
    with client_on(emulator, max_connections=4) as client:
        started = time.monotonic()
        results = list(
            client.batch(questions(6), concurrency=4, max_requests_per_minute=240, timeout=1.0)
        )
        elapsed = time.monotonic() - started
    assert elapsed >= 1.2  # 5 intervals of 0.25 s: the later ones waited longer than 1 s
    assert all(r.ok and r.attempts == 1 for r in results), [r.error for r in results]


def test_concurrency_beyond_the_pool_is_refused(emulator: Emulator) -> None:
    client = client_on(emulator, max_connections=2)
    with client, pytest.raises(ConfigurationError, match="more than the client can run at once"):
        client.batch(questions(3), concurrency=8)


def test_with_lanes_a_batch_runs_sixteen_per_connection(emulator: Emulator) -> None:
    with client_on(emulator, max_connections=1, lanes=True) as client:
        with pytest.raises(ConfigurationError, match=r"max_connections=1 x 16 lanes"):
            client.batch(questions(3), concurrency=17)
        with client.batch(questions(48), concurrency=16) as run:
            results = list(run)
        assert all(r.ok for r in results), [r.error for r in results]
        assert client.pool_stats()["lane_requests"] == 48
    assert emulator.stats()["handshakes"] == 1


def test_a_retry_after_too_long_to_honour_does_not_stall_the_run(emulator: Emulator) -> None:
    with client_on(emulator, max_connections=2) as client:
        emulator.inject(Fault(error_code="rate_limit_exceeded", retry_after=3600))
        started = time.monotonic()
        results = list(client.batch(questions(10), concurrency=2))
        elapsed = time.monotonic() - started
    assert all(r.ok for r in results)
    assert sum(r.attempts for r in results) == 11
    assert elapsed < 10  # the policy backs off instead of waiting an hour, and so does pacing


def test_stop_ends_a_retry_pause_at_once(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 30.0)  # a pause nobody waits out here
    monkeypatch.setattr(_retry, "MAX_BACKOFF", 30.0)
    with client_on(emulator, max_connections=1) as client:
        emulator.inject(Fault(error_code="server_error"))
        run = client.batch(questions(1), concurrency=1)
        results, elapsed = stopped_after(run, 0.5, grace=60)
    assert elapsed < 3
    assert len(results) == 1 and results[0].attempts == 1
    assert isinstance(results[0].error, oaiws.InternalServerError)  # its last failure stands


@pytest.mark.parametrize("ordered", [False, True])
def test_a_defect_in_one_request_is_its_result_and_the_run_goes_on(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, ordered: bool
) -> None:
    real = batch_module.estimate_tokens

    def estimate(fields: dict[str, Any]) -> int:
        if fields.get("input") == "question 3":
            raise RuntimeError("a bug")  # stands for any defect inside the runner
        return real(fields)

    monkeypatch.setattr(batch_module, "estimate_tokens", estimate)
    with client_on(emulator, max_connections=2) as client:
        results = list(client.batch(questions(8), concurrency=2, ordered=ordered))
    assert sorted(r.index for r in results) == list(range(8))  # no index lost, no hang
    broken = next(r for r in results if r.index == 3)
    assert isinstance(broken.error, oaiws.OAIWSError) and "RuntimeError" in str(broken.error)
    assert all(r.ok for r in results if r.index != 3)
