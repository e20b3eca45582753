"""(a) Sequential warm latency: one request at a time, short (20 deltas) and long (200).

Every contender is built and warmed up first (imports, TLS contexts, kept connections), then
the requests run in blocks: ``block`` consecutive requests of one contender, as a program
makes them, the blocks of each round in a fresh shuffled order, so that drift in the machine
and the aftermath of the previous contender hit all of them alike (see ``in_blocks``). A
request is timed from the call to the terminal event. Contenders 2 and 3 open a connection
for each request by design, so their figures include a handshake (and the emulator's
``handshake_delay``).
"""

from __future__ import annotations

import gc
import time
from typing import Any

from benchmarks import contenders as C
from benchmarks.scenarios.common import Check, Settings, failure_lines, fmt, in_blocks
from benchmarks.stats import ratio, summary

LENGTHS = (("short", 20), ("long", 200))


def run(target: C.Target, settings: Settings) -> dict[str, Any]:
    built = {name: C.make(name, target) for name in C.NAMES}
    failures: dict[str, list[str]] = {}
    figures: dict[str, Any] = {
        "requests": settings.requests,
        "block": settings.block,
        "lengths": {},
        "failures": failures,
    }
    try:
        for label, deltas in LENGTHS:
            request = C.fields(deltas, "warm")
            texts = {name: C.first_answer(built[name], request, failures) for name in C.NAMES}
            reference = texts[C.NAMES[0]]
            for name, answer in texts.items():
                # The emulator's model is deterministic: everyone must read the same answer.
                assert answer == reference, f"{name} read {answer}, the floor read {reference}"
            for _ in range(settings.warmup):
                for name in C.NAMES:
                    C.attempt(built[name], request, failures)
            samples: dict[str, list[float]] = {name: [] for name in C.NAMES}
            gc.collect()
            for name in in_blocks(C.NAMES, settings.requests, settings.block):
                contender = built[name]
                started = time.perf_counter()
                if C.attempt(contender, request, failures) is not None:
                    samples[name].append(time.perf_counter() - started)
            rows = {name: summary(samples[name]) for name in C.NAMES}
            floor = rows[C.NAMES[0]]
            for row in rows.values():
                row["ratio_median"] = ratio(row["median_ms"], floor["median_ms"])
                row["ratio_p99"] = ratio(row["p99_ms"], floor["p99_ms"])
            figures["lengths"][label] = {
                "deltas": deltas,
                "events_per_response": reference[0],
                "contenders": rows,
            }
    finally:
        for contender in built.values():
            contender.close()
    return figures


def checks(figures: dict[str, Any]) -> list[Check]:
    found = []
    for label, data in figures["lengths"].items():
        rows = data["contenders"]
        mine = rows["oaiws"]["median_ms"]
        floor = rows["oaiws"]["ratio_median"]
        found.append(
            Check("a", f"{label}: oaiws <= 1.05x the floor", f"{floor:.3f}x", floor <= 1.05)
        )
        for name, times in (("sdk_ws_kept", 5.0), ("sdk_http", 3.0)):
            faster = ratio(rows[name]["median_ms"], mine) or 0.0
            found.append(
                Check(
                    "a",
                    f"{label}: oaiws >= {times:g}x faster than {C.LABELS[name]}",
                    f"{faster:.2f}x",
                    faster >= times,
                )
            )
        # Where WebSocket mode is not offered: oaiws over HTTP against the SDK over HTTP.
        over_http = rows["oaiws_http"]["median_ms"]
        faster = ratio(rows["sdk_http"]["median_ms"], over_http) or 0.0
        found.append(
            Check(
                "a",
                f"{label}: oaiws over HTTP faster than {C.LABELS['sdk_http']}",
                f"{faster:.2f}x ({over_http:.3f} vs {rows['sdk_http']['median_ms']:.3f} ms; "
                f"{ratio(over_http, mine) or 0.0:.2f}x oaiws over WebSocket)",
                faster > 1.0,
            )
        )
    return found


def table(figures: dict[str, Any]) -> str:
    lines = []
    for label, data in figures["lengths"].items():
        lines.append(
            f"{label}: {data['deltas']} deltas, {data['events_per_response']} events per "
            f"response, {figures['requests']} requests each, in shuffled blocks of "
            f"{figures.get('block', 1)}"
        )
        lines.append(
            f"  {'contender':<34}{'median ms':>11}{'p99 ms':>10}{'x floor':>9}{'p99 x':>8}{'n':>6}"
        )
        for name in C.NAMES:
            row = data["contenders"][name]
            lines.append(
                f"  {C.LABELS[name]:<34}{row['median_ms']:>11.3f}{row['p99_ms']:>10.3f}"
                f"{fmt(row['ratio_median'], '.2f', 'x'):>9}{fmt(row['ratio_p99'], '.2f', 'x'):>8}"
                f"{row['n']:>6}"
            )
    lines += failure_lines(figures.get("failures", {}))
    return "\n".join(lines)
