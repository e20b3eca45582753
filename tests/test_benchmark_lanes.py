"""The lanes benchmark keeps running: ``python -m benchmarks.lanes --quick`` runs every part
and reports its figures and its target. It needs no official SDK, so it runs on every Python.

Nothing here asserts a performance ratio (noisy on a shared machine): only that the figures
are complete and sane, and what is correctness rather than speed (counters that add up, the
connections each mode may open).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from benchsupport import run_quick

pytestmark = pytest.mark.timeout(300)


def test_the_lanes_benchmark_runs_every_part_and_reports_its_target(tmp_path: Path) -> None:
    out, figures = run_quick("benchmarks.lanes", tmp_path / "lanes.json")
    for part in ("(a) ", "(b) ", "(c) ", "targets"):
        assert part in out
    # (a): both modes ran every turn of every conversation, and the counters add up.
    runs = {run["mode"]: run for run in figures["a"]["runs"]}
    assert set(runs) == {"lanes", "default"}
    turns = figures["settings"]["turns"]
    for run in runs.values():
        assert run["turns"] == run["server_requests"] == 64 * turns
        assert run["continuation_turns"] == 64 * (turns - 1)
        assert 0.0 <= run["cache_hit_rate"] <= 1.0 and run["bytes_per_turn"] > 0
        assert run["counters_agree"], run
        assert run["connections_opened"] <= 4 and run["handshakes"] <= 4
    # Lanes keep each conversation's chain between turns; holds of 1 s cannot outlast the
    # think time, so the default pool replays.
    assert runs["lanes"]["cache_hits"] > runs["default"]["cache_hits"]
    assert runs["lanes"]["peak_gauges"]["lane_connections"] <= 4
    # (b): every figure present and positive; 8 streams shared one connection with lanes.
    for kind in ("single", "concurrent"):
        rows = figures["b"][kind]
        assert set(rows) == {"lanes", "default"}
        for row in rows.values():
            assert row["events"] >= row["responses"] * 200 > 0
            assert row["cpu_us_per_event"] > 0 and row["events_per_second"] > 0
            assert row["gap_p99_us"] >= row["gap_median_us"] > 0
            assert row["first_event_p99_ms"] >= row["first_event_median_ms"] > 0
    assert figures["b"]["concurrent"]["lanes"]["connections_opened"] == 1
    assert figures["b"]["concurrent"]["default"]["connections_opened"] == 8
    # (c): every response of both modes, lanes over at most 4 connections.
    singles = {run["mode"]: run for run in figures["c"]["runs"]}
    assert set(singles) == {"lanes", "default"}
    for run in singles.values():
        assert (
            run["responses"]
            == run["server_requests"]
            == 64 * figures["settings"]["singles_per_thread"]
        )
        assert run["responses_per_second"] > 0 and run["cpu_us_per_response"] > 0
        assert run["latency"]["p99_ms"] >= run["latency"]["median_ms"] > 0
    assert singles["lanes"]["connections_opened"] <= 4
    assert singles["default"]["connections_opened"] <= 64
    assert len(figures["targets"]) == 1 and "holds" in figures["targets"][0]
