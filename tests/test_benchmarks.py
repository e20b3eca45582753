"""The benchmark keeps running: ``python -m benchmarks --quick`` covers every contender and
every scenario, prints its tables and writes its JSON.

Nothing here asserts a performance ratio (they are noisy on a shared machine); only that the
figures are complete and sane, and one correctness property: in the many-threads scenario
oaiws never opens more connections than its pool allows.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from benchsupport import run_quick

from benchmarks.scenarios.common import in_blocks, run_child

CONTENDERS = (
    "raw_kept",
    "raw_fresh",
    "sdk_ws_fresh",
    "sdk_ws_kept",
    "sdk_http",
    "oaiws",
    "oaiws_http",
)

pytestmark = pytest.mark.timeout(300)

# The benchmark compares oaiws with the official SDK, so it needs the SDK; the test extra
# installs it wherever it exists (Python 3.10+).
pytest.importorskip(
    "openai.lib.responses_websocket",
    reason="the benchmark compares with the official openai SDK, which needs Python 3.10+",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    return run_quick("benchmarks", tmp_path_factory.mktemp("bench") / "quick.json")


def test_the_table_names_every_scenario_contender_and_target(quick_run):
    out, _ = quick_run
    for key in "abcde":
        assert f"\n({key}) " in out
    for label in ("raw websocket-client, kept", "openai connect() per request", "oaiws"):
        assert label in out
    assert "targets" in out and "x floor" in out


def test_the_json_has_every_contender_in_every_scenario(quick_run):
    _, figures = quick_run
    scenarios = figures["scenarios"]
    assert set(scenarios) == set("abcde")
    for length in ("short", "long"):
        rows = scenarios["a"]["lengths"][length]["contenders"]
        assert set(rows) == set(CONTENDERS)
        for name, row in rows.items():
            if name not in scenarios["a"]["failures"]:
                assert row["median_ms"] > 0 and row["p99_ms"] >= row["median_ms"]
        assert rows["raw_kept"]["ratio_median"] == 1.0
    assert set(scenarios["b"]["contenders"]) == set(CONTENDERS)
    for row in scenarios["b"]["contenders"].values():
        assert row["throughput_rps"] > 0
    for row in scenarios["c"]["contenders"].values():
        assert row["total_ms"] > row["import_ms"] > 0
    assert set(scenarios["c"]["contenders"]) == set(CONTENDERS)
    assert set(scenarios["d"]["contenders"]) == {"oaiws_conversation", "naive_pool", "openai_http"}
    for backend in ("orjson", "json"):
        cpu = scenarios["e"]["cpu"][backend]
        assert set(cpu["us_per_event"]) == set(CONTENDERS)
        assert all(us > 0 for us in cpu["us_per_event"].values())
        assert scenarios["e"]["memory"][backend]["oaiws"] is not None
    assert figures["targets"] and all("holds" in target for target in figures["targets"])


def test_oaiws_never_opens_more_connections_than_its_pool(quick_run):
    _, figures = quick_run
    many = figures["scenarios"]["b"]
    size = many["pool_size"]
    assert many["contenders"]["oaiws"]["handshakes"] <= size
    assert all(opened <= size for opened in many["oaiws_pool_connections_opened"])
    # ... while the floor's threads each kept their own connection, as designed.
    assert many["contenders"]["raw_kept"]["handshakes"] == size


def test_a_failing_child_is_recorded_each_time_then_raised():
    # What keeps one crash of the SDK from ending a run: every failed attempt is recorded
    # (exit status and last line), and only the last one is raised.
    failures: dict[str, list[str]] = {}
    env = {**os.environ, "BENCH_TARGET": '{"no": "target"}'}
    with pytest.raises(RuntimeError, match="failed 2 times"):
        run_child(
            "benchmarks.scenarios.cold",
            ["oaiws"],
            env=env,
            failures=failures,
            key="cold oaiws",
            timeout=60,
            tries=2,
        )
    assert len(failures["cold oaiws"]) == 2
    assert all(line.startswith("exit 1: ") for line in failures["cold oaiws"])


def test_requests_run_in_shuffled_blocks_so_no_contender_keeps_its_neighbour():
    # A fixed rotation kept neighbours (oaiws always ran right after the SDK over HTTP);
    # in_blocks gives every contender its requests in runs of `block`, rounds shuffled.
    names = ("a", "b", "c", "d")
    order = list(in_blocks(names, requests=23, block=5))
    assert all(order.count(name) == 23 for name in names)
    runs = [order[i : i + 5] for i in range(0, 20 * 4, 5)]
    assert all(len(set(run)) == 1 for run in runs), "full blocks of one contender"
    assert len(set(order[80:])) == 4 and len(order[80:]) == 12, "a last round of 3 each"
    rounds = [tuple(run[0] for run in runs[i : i + 4]) for i in range(0, 16, 4)]
    assert len(set(rounds)) > 1, "the order changes between rounds"
    followers = {
        order[i + 1] for i in range(len(order) - 1) if order[i] != order[i + 1] and order[i] == "a"
    }
    assert len(followers) > 1, "a is not always followed by the same contender"


def test_the_batch_benchmark_runs_every_contender_and_reports_its_targets(
    tmp_path: Path,
) -> None:
    out, figures = run_quick("benchmarks.batch", tmp_path / "batch.json")
    assert set(figures["free"]) == {"sdk_pool", "oaiws_pool", "batch"}
    assert set(figures["limited"]) == {"sdk_pool", "oaiws_pool", "batch_told", "batch_aimd"}
    for part in ("free", "limited"):
        for row in figures[part].values():
            assert row["requests_per_second"] > 0 and row["cpu_us_per_request"] > 0
    # Told the limit, the run never met a 429: pacing is correctness, not performance.
    assert figures["limited"]["batch_told"]["rate_limited"] == 0
    assert len(figures["targets"]) == 3 and "targets" in out
