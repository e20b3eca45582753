"""``oaiws batch`` in a child process against the emulator: Batch API files in and out,
resume, Ctrl-C, sharding, bad input refused before anything is sent."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from batchsupport import batch_line, cli_env, read_jsonl, run_cli, write_jsonl

import oaiws
from oaiws.testing import Emulator, Fault


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(deltas=3) as emu:
        yield emu


def answers(emu: Emulator, lines: list[dict[str, Any]]) -> dict[str, str]:
    """What each request gets from an uninterrupted, fault-free client."""
    with oaiws.Client(api_key=emu.api_key, base_url=emu.base_url) as client:
        return {
            line["custom_id"]: client.create_response(**line["body"]).output_text for line in lines
        }


def output_text(line: dict[str, Any]) -> str:
    body = line["response"]["body"]
    return "".join(
        part["text"]
        for item in body["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


def test_a_faulted_file_ends_with_every_request_once_and_right(
    emulator: Emulator, tmp_path: Path
) -> None:
    lines = [batch_line(f"req-{i}") for i in range(150)]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    expected = answers(emulator, lines)
    emulator.inject(Fault(close_after_events=1), times=5)
    emulator.inject(Fault(error_code="rate_limit_exceeded", retry_after=0.05), times=5)
    output = tmp_path / "out.jsonl"
    done = run_cli(emulator, str(source), "--output", str(output), "--concurrency", "8")
    assert done.returncode == 0, done.stderr
    results = read_jsonl(output)
    assert Counter(r["custom_id"] for r in results) == Counter(expected.keys())
    assert {r["custom_id"]: output_text(r) for r in results} == expected
    first = results[0]
    assert set(first) == {"id", "custom_id", "response", "error"}
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200
    assert first["response"]["request_id"].startswith("req_")
    assert first["response"]["body"]["status"] == "completed"
    assert not (tmp_path / "out.errors.jsonl").exists()
    summary = done.stderr.splitlines()[-1]
    assert summary.startswith("done: 150 succeeded, 0 failed")
    assert "10 retries, 5 rate limited (429)" in summary and "p95" in summary


def test_failures_go_to_the_errors_file_and_a_rerun_retries_only_them(
    emulator: Emulator, tmp_path: Path
) -> None:
    lines = [batch_line(f"r{i}") for i in range(20)]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    output, errors = tmp_path / "out.jsonl", tmp_path / "failed.jsonl"
    emulator.inject(Fault(error_code="invalid_request_error", error_status=400), times=3)
    first = run_cli(emulator, str(source), "-o", str(output), "--errors", str(errors),
                    "--concurrency", "1")  # fmt: skip
    assert first.returncode == 1, first.stderr
    failed = read_jsonl(errors)
    assert len(failed) == 3 and len(read_jsonl(output)) == 17
    assert failed[0]["response"]["status_code"] == 400
    assert failed[0]["response"]["body"]["error"]["code"] == "invalid_request_error"
    assert "3 request(s) failing: see" in first.stderr

    emulator.reset_stats()
    second = run_cli(emulator, str(source), "-o", str(output), "--errors", str(errors))
    assert second.returncode == 0, second.stderr
    assert emulator.stats()["requests"] == 3  # only the failed ones ran again
    assert Counter(r["custom_id"] for r in read_jsonl(output)) == Counter(
        line["custom_id"] for line in lines
    )
    assert read_jsonl(errors) == []  # holds only what still fails: nothing


def test_bad_lines_are_refused_with_their_numbers_and_nothing_is_sent(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [
            batch_line("a"),
            "{oops",
            batch_line("a"),
            {**batch_line("b"), "url": "/v1/chat/completions"},
            batch_line("c", temperature="hot"),
            {"method": "POST", "url": "/v1/responses", "body": {"model": "m", "input": "x"}},
        ],
    )
    emulator.reset_stats()
    refused = run_cli(emulator, str(source), "--output", str(tmp_path / "out.jsonl"))
    assert refused.returncode == 2
    assert [line.split(": ")[1] for line in refused.stderr.splitlines()[:5]] == [
        "line 2", "line 3", "line 4", "line 5", "line 6",
    ]  # fmt: skip
    assert "nothing was sent" in refused.stderr
    assert emulator.stats()["requests"] == 0 and emulator.stats()["handshakes"] == 0
    assert not (tmp_path / "out.jsonl").exists()


def test_ctrl_c_stops_promptly_leaves_whole_lines_and_a_rerun_redoes_nothing(
    popen_cli: Any, tmp_path: Path
) -> None:
    lines = [batch_line(f"s{i}") for i in range(400)]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    with Emulator(deltas=3, first_event_delay=0.05) as emu:
        child = popen_cli(emu, str(source), "-o", str(output), "--concurrency", "4")
        deadline = time.monotonic() + 30
        while len(read_whole_lines(output)) < 20:
            assert child.poll() is None, child.communicate()[1]
            assert time.monotonic() < deadline, "no results within 30 s"
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        interrupted_at = time.monotonic()
        _, stderr = child.communicate(timeout=30)
        stopped_after = time.monotonic() - interrupted_at
        assert child.returncode == 130, stderr
        assert stopped_after < 6  # the grace period is 5 s; these finish in milliseconds
        assert "run the same command again to resume" in stderr
        kept = read_jsonl(output)  # every line whole: this parses them all
        assert 20 <= len(kept) < 400
        assert len({r["custom_id"] for r in kept}) == len(kept)

        emu.reset_stats()
        rerun = run_cli(emu, str(source), "-o", str(output), "--concurrency", "4")
        assert rerun.returncode == 0, rerun.stderr
        assert emu.stats()["responses_completed"] == 400 - len(kept)  # nothing done twice
        assert f"resuming: {len(kept)} already succeeded" in rerun.stderr
    assert Counter(r["custom_id"] for r in read_jsonl(output)) == Counter(
        line["custom_id"] for line in lines
    )


def read_whole_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return path.read_text().split("\n")[:-1]


def test_shards_split_a_file_into_disjoint_parts_that_cover_it(
    emulator: Emulator, tmp_path: Path
) -> None:
    lines = [batch_line(f"id-{i}") for i in range(90)]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    seen: list[str] = []
    sizes = []
    for index in range(3):
        output = tmp_path / f"part-{index}.jsonl"
        done = run_cli(emulator, str(source), "-o", str(output), "--shard", f"{index}/3")
        assert done.returncode == 0, done.stderr
        part = [r["custom_id"] for r in read_jsonl(output)]
        sizes.append(len(part))
        seen += part
    assert sorted(seen) == sorted(line["custom_id"] for line in lines)  # each exactly once
    assert all(size > 10 for size in sizes)  # a real split, not everything in one part


def test_standard_input_progress_lines_and_the_summary(emulator: Emulator, tmp_path: Path) -> None:
    lines = [batch_line(f"p{i}", metadata={"emulator_first_event_delay_ms": "20"})
             for i in range(60)]  # fmt: skip
    output = tmp_path / "out.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "oaiws.cli",
            "batch",
            "-",
            "-o",
            str(output),
            "--concurrency",
            "2",
            "--progress-interval",
            "0.2",
        ],
        input="".join(json.dumps(line) + "\n" for line in lines),
        env=cli_env(emulator),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(read_jsonl(output)) == 60
    progress = [line for line in done.stderr.splitlines() if line.startswith("progress: ")]
    assert progress, done.stderr
    assert "in flight" in progress[0] and "req/s" in progress[0] and "tokens in" in progress[0]
    summary = done.stderr.splitlines()[-1]
    assert summary.startswith("done: 60 succeeded, 0 failed in ")
    assert "latency p50" in summary and "tokens" in summary


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard", "3/3"], "K must be in 0..2"),
        (["--concurrency", "0"], "--concurrency must be a positive integer"),
        (["--max-requests-per-minute", "-5"], "--max-requests-per-minute must be"),
        (["--grace", "nan"], "--grace must be a non-negative number"),
    ],
)
def test_bad_usage_exits_2(
    emulator: Emulator, tmp_path: Path, args: list[str], message: str
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [batch_line("a")])
    done = run_cli(emulator, str(source), "-o", str(tmp_path / "out.jsonl"), *args)
    assert done.returncode == 2 and message in done.stderr


def test_a_missing_file_or_key_exits_2(emulator: Emulator, tmp_path: Path) -> None:
    missing = run_cli(emulator, str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    source = write_jsonl(tmp_path / "in.jsonl", [batch_line("a")])
    env = {k: v for k, v in cli_env(emulator).items() if k != "OPENAI_API_KEY"}
    no_key = subprocess.run(
        [sys.executable, "-m", "oaiws.cli", "batch", str(source), "-o", str(tmp_path / "o")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert no_key.returncode == 2 and "OPENAI_API_KEY" in no_key.stderr


def test_a_failure_line_cut_short_by_a_crash_is_replaced_not_lost(
    emulator: Emulator, tmp_path: Path
) -> None:
    failing = batch_line("b", metadata={"emulator_outcome": "failed"})
    source = write_jsonl(tmp_path / "in.jsonl", [batch_line("a"), failing])
    output, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    errors.write_text('{"id": "batch_req_1", "custom_id": "b", "respo')  # killed mid-write
    done = run_cli(emulator, str(source), "-o", str(output))
    assert done.returncode == 1, done.stderr
    failed = read_jsonl(errors)  # parses every line: the cut one is gone
    assert [line["custom_id"] for line in failed] == ["b"]
    assert failed[0]["error"]["code"] == "response_failed"
    assert failed[0]["response"]["body"]["status"] == "failed"


def test_any_custom_id_json_allows_is_written_resumed_and_sharded(
    emulator: Emulator, tmp_path: Path
) -> None:
    odd = ["\ud800lone", "snow \u2603", 'quote " and \\ slash']
    # The id stays here (it is never sent); a body with a lone surrogate is refused up front.
    source = write_jsonl(tmp_path / "in.jsonl", [batch_line(c, input="plain") for c in odd])
    output = tmp_path / "out.jsonl"
    done = run_cli(emulator, str(source), "-o", str(output), "--shard", "0/1")
    assert done.returncode == 0, done.stderr
    assert sorted(r["custom_id"] for r in read_jsonl(output)) == sorted(odd)
    emulator.reset_stats()
    again = run_cli(emulator, str(source), "-o", str(output), "--shard", "0/1")
    assert again.returncode == 0 and emulator.stats()["requests"] == 0
    parts = [
        run_cli(emulator, str(source), "-o", str(tmp_path / f"p{k}.jsonl"), "--shard", f"{k}/2")
        for k in range(2)
    ]
    assert all(part.returncode == 0 for part in parts)
    assert sorted(
        r["custom_id"] for k in range(2) for r in read_jsonl(tmp_path / f"p{k}.jsonl")
    ) == sorted(odd)
