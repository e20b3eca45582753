"""(b) Many threads at once: 32 threads, mixed lengths, oaiws with ``max_connections=8``.

Every contender serves the same list of requests (three short ones of 20 deltas for each
long one of 200), pulled by its threads from a shared counter until none are left. Timed
from the moment the threads are released to the last terminal event; connections are opened
inside the timed run (nothing is pre-warmed but imports), so the handshakes they cost count.

- the floor, ``raw_kept``, is 8 threads each driving its own kept connection: 8 raw
  connections in parallel, with no pool, no lock and no waiting;
- ``oaiws`` is 32 threads sharing one ``Client(max_connections=8)``;
- the others run 32 threads, as a threaded server would: ``sdk_ws_kept`` therefore keeps 32
  connections, and the per-request contenders open one per request.

Handshakes come from the emulator's counter (``handshakes``, WebSocket upgrades); HTTP has
none, so ``sdk_http`` shows ``-``. Each round runs every contender once, in a rotating order;
throughput is the median over rounds, latencies are pooled over rounds.
"""

from __future__ import annotations

import gc
import itertools
import threading
import time
from typing import Any, Optional

from benchmarks import contenders as C
from benchmarks.scenarios.common import Check, Settings, failure_lines, fmt, shuffled_rounds
from benchmarks.stats import median, percentile, ratio

LONG_EVERY = 4  # one long response in four


def _deltas(index: int) -> int:
    return 200 if index % LONG_EVERY == LONG_EVERY - 1 else 20


def _one_round(
    name: str, target: C.Target, settings: Settings, stats: Any, failures: dict[str, list[str]]
) -> tuple[float, list[float], Optional[int], Optional[int]]:
    workers = settings.pool_size if name == "raw_kept" else settings.threads
    contender = C.make(name, target, max_connections=settings.pool_size)
    requests = [C.fields(_deltas(i), f"b{i}") for i in range(settings.concurrent_requests)]
    counter = itertools.count()
    latencies: list[float] = []
    failures: dict[str, list[str]] = {}
    gate = threading.Barrier(workers + 1)

    def work() -> None:
        gate.wait()
        mine: list[float] = []
        for index in counter:  # itertools.count is atomic under the GIL
            if index >= len(requests):
                break
            started = time.perf_counter()
            if C.attempt(contender, requests[index], failures) is not None:
                mine.append(time.perf_counter() - started)
        latencies.extend(mine)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    gc.collect()
    before = stats()["handshakes"]
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    handshakes: Optional[int] = int(stats()["handshakes"]) - int(before)
    pool_opened: Optional[int] = None
    if isinstance(contender, C.OAIWS):
        pool_opened = int(contender.pool_stats()["connections_opened"])
    contender.close()
    if name == "sdk_http":
        handshakes = None  # HTTP keeps its own connections; no WebSocket upgrades to count
    return elapsed, latencies, handshakes, pool_opened


def run(target: C.Target, settings: Settings, stats: Any) -> dict[str, Any]:
    """``stats`` is the emulator's ``stats`` method (its counters give the handshakes)."""
    per_round: dict[str, list[float]] = {name: [] for name in C.NAMES}
    latencies: dict[str, list[float]] = {name: [] for name in C.NAMES}
    handshakes: dict[str, list[Optional[int]]] = {name: [] for name in C.NAMES}
    pool_opened: list[Optional[int]] = []
    failures: dict[str, list[str]] = {}
    total = settings.concurrent_requests
    for order in shuffled_rounds(C.NAMES, settings.rounds):
        for name in order:
            elapsed, seen, shaken, opened = _one_round(name, target, settings, stats, failures)
            per_round[name].append(len(seen) / elapsed)  # completed requests only
            latencies[name] += seen
            handshakes[name].append(shaken)
            if name == "oaiws":
                pool_opened.append(opened)
    rows: dict[str, Any] = {}
    for name in C.NAMES:
        counted = [h for h in handshakes[name] if h is not None]
        rows[name] = {
            "threads": settings.pool_size if name == "raw_kept" else settings.threads,
            "throughput_rps": round(median(per_round[name]), 2),
            "throughput_rounds": [round(x, 2) for x in per_round[name]],
            "p50_ms": round(percentile(latencies[name], 0.50) * 1e3, 3),
            "p99_ms": round(percentile(latencies[name], 0.99) * 1e3, 3),
            "handshakes": max(counted) if counted else None,
            "handshakes_per_request": round(max(counted) / total, 4) if counted else None,
        }
    floor = rows[C.NAMES[0]]["throughput_rps"]
    for row in rows.values():
        row["throughput_x_floor"] = ratio(row["throughput_rps"], floor)
    return {
        "requests": total,
        "threads": settings.threads,
        "pool_size": settings.pool_size,
        "rounds": settings.rounds,
        "oaiws_pool_connections_opened": pool_opened,
        "failures": failures,
        "contenders": rows,
    }


def checks(figures: dict[str, Any]) -> list[Check]:
    rows = figures["contenders"]
    mine = rows["oaiws"]
    size = figures["pool_size"]
    share = mine["throughput_x_floor"] or 0.0
    return [
        Check(
            "b",
            f"oaiws throughput >= 0.95x {size} raw kept connections in parallel",
            f"{share:.3f}x",
            share >= 0.95,
        ),
        Check(
            "b",
            f"oaiws handshakes = the pool size ({size}) in every round",
            f"{mine['handshakes']} (most in a round)",
            mine["handshakes"] is not None and mine["handshakes"] <= size,
        ),
    ]


def table(figures: dict[str, Any]) -> str:
    lines = [
        f"{figures['requests']} requests (1 in {LONG_EVERY} long), {figures['threads']} threads, "
        f"oaiws max_connections={figures['pool_size']}, median of {figures['rounds']} rounds",
        f"  {'contender':<34}{'threads':>8}{'req/s':>9}{'x floor':>9}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'handshakes':>12}{'per req':>9}",
    ]
    for name in C.NAMES:
        row = figures["contenders"][name]
        lines.append(
            f"  {C.LABELS[name]:<34}{row['threads']:>8}{row['throughput_rps']:>9.1f}"
            f"{fmt(row['throughput_x_floor'], '.2f', 'x'):>9}{row['p50_ms']:>9.2f}"
            f"{row['p99_ms']:>9.2f}{fmt(row['handshakes'], 'd'):>12}"
            f"{fmt(row['handshakes_per_request'], '.3f'):>9}"
        )
    lines += failure_lines(figures.get("failures", {}))
    return "\n".join(lines)
