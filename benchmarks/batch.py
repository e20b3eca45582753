"""Batch throughput: ``client.batch`` against what a user writes today, in one run.

Contenders, each with 64 requests in flight:

1. a ``ThreadPoolExecutor`` of 64 threads over the official SDK (``responses.create`` over
   HTTP, its own retries);
2. the same executor over an oaiws ``Client`` (``create_response``, ``max_connections=64``);
3. ``client.batch(requests, concurrency=64)``.

Part 1, no limit: throughput and client CPU per request (``time.process_time()`` of this
process, every thread included; the emulator runs in its own process), with a per-response
delay that stands for a model's time to answer. Part 2, under an emulated rate limit
(requests per minute, enforced over one-second windows as the service does): the share of
the limit each contender used and the 429s it met; ``batch`` runs twice, told the limit
(``max_requests_per_minute``) and not told it (AIMD alone).

Run: python -m benchmarks.batch [--requests 2000] [--limited-requests 600] [--delay 0.25]
     [--limit 3000] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import oaiws
from benchmarks.stats import write_figures
from oaiws.testing import EmulatorProcess

CONCURRENCY = 64
NAMES = {
    "sdk_pool": "1 ThreadPoolExecutor + openai (HTTP)",
    "oaiws_pool": "2 ThreadPoolExecutor + oaiws",
    "batch": "3 oaiws client.batch",
    "batch_told": "3 oaiws client.batch, told the limit",
    "batch_aimd": "3 oaiws client.batch, not told (AIMD)",
}


def requests(count: int) -> list[dict[str, Any]]:
    return [{"model": "gpt-test", "input": f"question {i}", "store": False} for i in range(count)]


def sdk_pool(emulator: Any, work: list[dict[str, Any]], _limit: Optional[float]) -> int:
    import openai  # noqa: PLC0415 - the other contenders run without it

    sdk = openai.OpenAI(api_key=emulator.api_key, base_url=emulator.base_url)

    def one(fields: dict[str, Any]) -> bool:
        try:
            return sdk.responses.create(**fields).status == "completed"
        except openai.OpenAIError:
            return False

    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            return sum(pool.map(one, work))
    finally:
        sdk.close()


def _client(emulator: Any) -> oaiws.Client:
    return oaiws.Client(
        api_key=emulator.api_key, base_url=emulator.base_url, max_connections=CONCURRENCY
    )


def oaiws_pool(emulator: Any, work: list[dict[str, Any]], _limit: Optional[float]) -> int:
    with _client(emulator) as client:

        def one(fields: dict[str, Any]) -> bool:
            try:
                return client.create_response(**fields).status == "completed"
            except oaiws.OAIWSError:
                return False

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            return sum(pool.map(one, work))


def batch(emulator: Any, work: list[dict[str, Any]], limit: Optional[float]) -> int:
    with _client(emulator) as client:
        run = client.batch(work, concurrency=CONCURRENCY, max_requests_per_minute=limit)
        return sum(result.ok for result in run)


Contender = Callable[[Any, list[dict[str, Any]], Optional[float]], int]


def measure(
    emulator: Any, contender: Contender, count: int, limit: Optional[float]
) -> dict[str, float]:
    emulator.reset_stats()
    work = requests(count)
    cpu, wall = time.process_time(), time.perf_counter()
    succeeded = contender(emulator, work, limit)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stats = emulator.stats()
    return {
        "requests": count,
        "succeeded": succeeded,
        "seconds": wall,
        "requests_per_second": succeeded / wall,
        "cpu_us_per_request": 1e6 * cpu / count,
        "rate_limited": stats["rate_limited"],
        "server_requests": stats["requests"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = sys.stdout
    figures: dict[str, Any] = {"settings": vars(args).copy(), "free": {}, "limited": {}}
    out.write(
        f"batch benchmark: {CONCURRENCY} in flight; per-response delay {args.delay:g} s;"
        " emulator in its own process, plain TCP\n\n"
    )
    with EmulatorProcess(deltas=8, first_event_delay=args.delay) as emulator:
        out.write(f"(1) no limit: {args.requests} requests each\n")
        out.write(f"  {'contender':40} {'req/s':>8} {'CPU us/req':>11} {'failed':>7}\n")
        for key, contender in (
            ("sdk_pool", sdk_pool),
            ("oaiws_pool", oaiws_pool),
            ("batch", batch),
        ):
            row = measure(emulator, contender, args.requests, None)
            figures["free"][key] = row
            out.write(
                f"  {NAMES[key]:40} {row['requests_per_second']:8.1f}"
                f" {row['cpu_us_per_request']:11.0f} {args.requests - row['succeeded']:7.0f}\n"
            )
    limit = args.limit
    out.write(
        f"\n(2) limit {limit:g} requests/min ({limit / 60:g}/s, one-second windows):"
        f" {args.limited_requests} requests each, each contender on a fresh emulator (a full"
        " budget, nobody else's 429s)\n"
    )
    out.write(
        f"  {'contender':40} {'req/s':>8} {'of limit':>9} {'429s':>6} {'429 %':>6} {'failed':>7}\n"
    )
    for key, contender, told in (
        ("sdk_pool", sdk_pool, None),
        ("oaiws_pool", oaiws_pool, None),
        ("batch_told", batch, limit),
        ("batch_aimd", batch, None),
    ):
        with EmulatorProcess(
            deltas=8, first_event_delay=args.delay, max_requests_per_minute=limit
        ) as emulator:
            row = measure(emulator, contender, args.limited_requests, told)
        row["share_of_limit"] = row["requests_per_second"] / (limit / 60.0)
        row["rate_limited_share"] = row["rate_limited"] / args.limited_requests
        figures["limited"][key] = row
        out.write(
            f"  {NAMES[key]:40} {row['requests_per_second']:8.1f}"
            f" {row['share_of_limit']:9.1%} {row['rate_limited']:6.0f}"
            f" {row['rate_limited_share']:6.1%}"
            f" {args.limited_requests - row['succeeded']:7.0f}\n"
        )
    figures["targets"] = targets(figures)
    out.write("\ntargets\n")
    for target in figures["targets"]:
        verdict = "holds " if target["holds"] else "MISSED"
        out.write(f"  [{verdict}] {target['what']}: {target['result']}\n")
    return figures


def targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    free, limited = figures["free"], figures["limited"]
    told = limited["batch_told"]
    fastest_other = max(
        free["sdk_pool"]["requests_per_second"], free["oaiws_pool"]["requests_per_second"]
    )
    return [
        {
            "what": "batch throughput ahead of both executors (no limit)",
            "holds": free["batch"]["requests_per_second"] >= fastest_other,
            "result": f"{free['batch']['requests_per_second']:.1f} vs"
            f" {free['sdk_pool']['requests_per_second']:.1f} (openai),"
            f" {free['oaiws_pool']['requests_per_second']:.1f} (oaiws pool) req/s",
        },
        {
            "what": "batch told the limit uses >= 95% of it",
            "holds": told["share_of_limit"] >= 0.95,
            "result": f"{told['share_of_limit']:.1%}",
        },
        {
            "what": "batch told the limit: 429s under 1% of requests",
            "holds": told["rate_limited_share"] < 0.01,
            "result": f"{told['rate_limited']:.0f} ({told['rate_limited_share']:.1%})",
        },
    ]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="part 1, per contender")
    parser.add_argument("--limited-requests", type=int, default=600, help="part 2, per contender")
    parser.add_argument(
        "--delay", type=float, default=0.25, help="seconds before each response's first event"
    )
    parser.add_argument("--limit", type=float, default=3000.0, help="part 2's requests per minute")
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run)")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.limited_requests, args.delay, args.limit = 128, 60, 0.02, 1800.0
    for name in ("requests", "limited_requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.delay < 0 or args.limit <= 0:
        parser.error("--delay must be >= 0 and --limit > 0")
    figures = run(args)
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
