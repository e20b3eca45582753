"""The pure logic of batches: pacing schedule, AIMD, token estimates, request lines, shards,
result files. No network here; the behaviour over real sockets is in the other modules."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from batchsupport import batch_line, write_jsonl
from hypothesis import given
from hypothesis import strategies as st

from oaiws import ConfigurationError
from oaiws._batchfile import (
    Shard,
    check_input,
    compact_errors,
    default_errors_path,
    succeeded_ids,
)
from oaiws._pacing import ConcurrencyLimit, Pacer, estimate_tokens
from oaiws.batch import request_fields
from oaiws.testing._ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_pacer_spreads_requests_one_interval_apart() -> None:
    clock = Clock()
    pacer = Pacer(600, None, clock=clock)  # 10 per second
    starts = [pacer.reserve(1) for _ in range(5)]
    assert starts == pytest.approx([1000.0, 1000.1, 1000.2, 1000.3, 1000.4])


def test_the_pacer_spreads_tokens_by_their_size() -> None:
    clock = Clock()
    pacer = Pacer(None, 6000, clock=clock)  # 100 tokens per second
    assert pacer.reserve(50) == 1000.0
    assert pacer.reserve(200) == pytest.approx(1000.5)  # after the 50 before it
    assert pacer.reserve(1) == pytest.approx(1002.5)


def test_the_pacer_keeps_the_stricter_budget() -> None:
    clock = Clock()
    pacer = Pacer(60, 60_000, clock=clock)  # 1 request/s, 1000 tokens/s
    assert pacer.reserve(10) == 1000.0
    assert pacer.reserve(10) == pytest.approx(1001.0)  # the request budget binds


def test_an_idle_pacer_saves_up_nothing() -> None:
    # Idle time is not credit: after a pause a burst would break the even spread.
    clock = Clock()
    pacer = Pacer(60, None, clock=clock)
    pacer.reserve(1)
    clock.now += 100
    assert pacer.reserve(1) == clock.now
    assert pacer.reserve(1) == pytest.approx(clock.now + 1)


def test_retry_after_pauses_every_start_and_keeps_the_spacing() -> None:
    clock = Clock()
    pacer = Pacer(600, None, clock=clock)
    pacer.reserve(1)
    pacer.pause(2.0)
    assert pacer.reserve(1) == pytest.approx(1002.0)
    assert pacer.reserve(1) == pytest.approx(1002.1)
    unpaced = Pacer(None, None, clock=clock)
    unpaced.pause(0.5)
    assert unpaced.reserve(1) == pytest.approx(1000.5)


def test_a_request_larger_than_a_minutes_tokens_waits_its_turn_and_runs() -> None:
    clock = Clock()
    pacer = Pacer(None, 600, clock=clock)
    assert pacer.reserve(5000) == 1000.0
    assert pacer.reserve(1) == pytest.approx(1060.0)  # booked as a whole minute


def test_aimd_halves_once_per_round_and_grows_back_by_one_per_round_trip() -> None:
    limit = ConcurrencyLimit(16)

    def stop() -> bool:
        return False

    rounds = [limit.acquire(stop) for _ in range(16)]
    assert limit.in_flight == 16 and rounds == [0] * 16
    assert limit.rate_limited(0) is True
    assert limit.limit == 8
    assert limit.rate_limited(0) is False  # the same round: one cut is enough
    for _ in range(16):
        limit.release(rate_limited=True)
    assert limit.limit == 8
    for _ in range(9):  # about one round trip at 8: +1
        started = limit.acquire(stop)
        assert started == 1
        limit.release(rate_limited=False)
    assert limit.limit == 9
    for _ in range(200):
        started = limit.acquire(stop)
        assert started is not None
        limit.release(rate_limited=False)
    assert limit.limit == 16  # never above the maximum
    for round_number in range(1, 10):
        limit.rate_limited(round_number)
    assert limit.limit == 1  # never below one


def test_a_stopped_limit_lets_nobody_in() -> None:
    limit = ConcurrencyLimit(1)
    stopped = [False]
    assert limit.acquire(lambda: stopped[0]) == 0
    waiter: list[object] = []
    thread = threading.Thread(target=lambda: waiter.append(limit.acquire(lambda: stopped[0])))
    thread.start()
    stopped[0] = True  # a plain flag, as stop() sets it: seen within a tenth of a second
    thread.join(5)
    assert waiter == [None]


def test_token_estimates_count_the_input_as_items_instructions_and_the_output_reserve() -> None:
    text = "x" * 400
    as_items = estimate_tokens({"input": text})
    assert as_items == 101  # 402 bytes of JSON
    assert estimate_tokens({"input": text, "instructions": "y" * 40}) == as_items + 10
    assert estimate_tokens({"input": text, "max_output_tokens": 500}) == as_items + 500
    assert estimate_tokens({"input": [{"role": "user", "content": text}]}) == 108


def test_batch_lines_and_field_dicts() -> None:
    assert request_fields({"model": "m", "input": "x"}) == (None, {"model": "m", "input": "x"})
    custom_id, fields = request_fields(batch_line("a", stream=False))
    assert custom_id == "a" and "stream" not in fields
    for bad, message in (
        ({"custom_id": "", "body": {}}, "custom_id"),
        ({"custom_id": "a", "url": "/v1/chat/completions", "body": {}}, "url must be"),
        ({"custom_id": "a", "method": "GET", "body": {}}, "method"),
        ({"custom_id": "a", "body": []}, "body"),
        ({"custom_id": "a", "body": {}, "extra": 1}, "extra"),
        ("text", "dict of fields"),
    ):
        with pytest.raises(ConfigurationError, match=message):
            request_fields(bad)


@given(st.lists(st.text(min_size=1, max_size=20), unique=True, max_size=200), st.integers(1, 7))
def test_shards_partition_every_id_exactly_once(ids: list[str], count: int) -> None:
    shards = [Shard(index, count) for index in range(count)]
    for custom_id in ids:
        assert sum(shard.holds(custom_id) for shard in shards) == 1


def test_shards_are_stable_and_parsed_strictly() -> None:
    # The same split on every machine and Python: a fixed hash, not hash().
    assert [Shard(k, 3).holds("request-42") for k in range(3)] == [False, False, True]
    assert Shard.parse("2/4") == Shard(2, 4)
    for bad in ("4/4", "-1/3", "1", "a/b", "0/0"):
        with pytest.raises(ConfigurationError, match="shard"):
            Shard.parse(bad)


def test_the_input_check_names_every_bad_line(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            batch_line("a"),
            "{not json",
            batch_line("a"),
            {"body": {"model": "m", "input": "x"}},
            batch_line("b", input=None),
            "[1, 2]",
            "",
            batch_line("c", max_output_tokens=0),
        ],
    )
    check = check_input(str(path), Shard())
    assert check.requests == 1
    assert [p.split(":")[0] for p in check.problems] == [
        "line 2", "line 3", "line 4", "line 5", "line 6", "line 8",
    ]  # fmt: skip
    assert "first on line 1" in check.problems[1]
    assert "input is required" in check.problems[3]


def test_a_cut_last_output_line_is_removed_on_resume(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    whole = json.dumps({"custom_id": "a", "response": {}, "error": None}) + "\n"
    output.write_text(whole + '{"custom_id": "b", "resp')
    assert succeeded_ids(str(output)) == {"a"}
    assert output.read_text() == whole
    (tmp_path / "other.jsonl").write_text("not ours\n")
    with pytest.raises(ConfigurationError, match="not an oaiws batch result"):
        succeeded_ids(str(tmp_path / "other.jsonl"))


def test_the_errors_file_keeps_the_latest_failure_of_each_request_still_failing(
    tmp_path: Path,
) -> None:
    errors = tmp_path / "out.errors.jsonl"
    lines = [{"custom_id": c, "error": {"code": n}} for c, n in (("a", 1), ("b", 1), ("a", 2))]
    write_jsonl(errors, lines)
    assert compact_errors(str(errors), succeeded={"b"}) == 1
    assert [json.loads(x) for x in errors.read_text().splitlines()] == [lines[2]]
    assert default_errors_path("out/results.jsonl") == "out/results.errors.jsonl"


def test_the_emulator_limits_spread_and_refuse_with_the_wait_needed() -> None:
    clock = Clock()
    limits = RateLimiter(120, None, 1.0, clock=clock)  # 2 per second, a burst of 2
    assert limits.admit(1) is None and limits.admit(1) is None
    assert limits.admit(1) == pytest.approx(0.5)
    clock.now += 0.5
    assert limits.admit(1) is None
    tokens = RateLimiter(None, 600, 1.0, clock=clock)  # 10 tokens per second
    assert tokens.admit(10) is None
    assert tokens.admit(5) == pytest.approx(0.5)
    clock.now += 10
    assert tokens.admit(1000) is None  # larger than the bucket: admitted when full, in debt
    assert tokens.admit(1) == pytest.approx(99.1)


def test_a_429_halves_the_pace_of_the_latest_starts_which_then_grows_back() -> None:
    clock = Clock()
    pacer = Pacer(None, None, clock=clock)
    for _ in range(11):  # 10 intervals of 0.1 s: 10 per second
        pacer.reserve(1)
        clock.now += 0.1
    pacer.slow_down()
    first = pacer.reserve(1)
    assert pacer.reserve(1) - first == pytest.approx(0.2)  # 5 per second
    for _ in range(5):  # about a second of successes at 5/s: +1 per second
        pacer.speed_up()
    third = pacer.reserve(1)
    assert pacer.reserve(1) - third == pytest.approx(1 / 6, rel=0.05)
    for _ in range(600_000):  # the rate grows as the square root of twice the successes
        pacer.speed_up()
    clock.now += 10
    assert pacer.reserve(1) == pacer.reserve(1)  # grown past any limit: no pace any more
