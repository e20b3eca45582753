"""oaiws against the alternatives, on one emulator, in one run: ``python -m benchmarks``.

The emulator runs in its own process with TLS on (``EmulatorProcess``); every contender runs
every scenario of the run against it, interleaved wherever the scenario allows, so the
figures hold as ratios even on a noisy machine. Prints one table per scenario (medians, p99,
ratios to the floor), then whether each target holds, and writes the same figures as JSON.

    python -m benchmarks                      # everything (a few minutes)
    python -m benchmarks --quick              # a smoke run: every scenario, tiny counts
    python -m benchmarks --scenarios a,e --requests 500 --handshake-delay-ms 60
    tox -e bench -- --quick

Scenarios: a (sequential warm latency), b (32 threads, mixed lengths), c (cold start),
d (20-turn store=false tool loop), e (client CPU per event, memory per idle connection).
See docs/performance.md for what each measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import oaiws  # noqa: E402 - after the path, so a checkout runs without installing
from benchmarks import contenders as C  # noqa: E402
from benchmarks.scenarios import client_cost, cold, concurrency, tool_loop, warm  # noqa: E402
from benchmarks.scenarios.common import Check, Settings  # noqa: E402
from oaiws import _json  # noqa: E402
from oaiws.testing import EmulatorProcess  # noqa: E402

SCENARIOS = {
    "a": ("sequential warm latency", warm),
    "b": ("32 threads, mixed lengths", concurrency),
    "c": ("cold start", cold),
    "d": ("20-turn store=false tool loop", tool_loop),
    "e": ("client cost: CPU per event, memory per idle connection", client_cost),
}
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "latest.json"
QUICK = {
    "requests": 10,
    "block": 5,
    "warmup": 2,
    "concurrent_requests": 64,
    "rounds": 1,
    "cold_starts": 1,
    "turns": 4,
    "tool_loop_repeats": 1,
    "cpu_requests": 3,
    "idle_connections": 10,
}


def _whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not at least {minimum}")
        return value

    return parse


_count = _whole_number(1)


def _parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="oaiws against the alternatives on one emulator, in one run.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: every scenario, tiny counts"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="which to run, comma-separated, from a,b,c,d,e (default: all)",
    )
    parser.add_argument(
        "--requests",
        type=_count,
        help=f"(a) measured requests per contender and length (default {defaults.requests})",
    )
    parser.add_argument(
        "--block",
        type=_count,
        help="(a), (e) consecutive requests of one contender before another's turn; the "
        f"blocks of each round run in a shuffled order (default {defaults.block})",
    )
    parser.add_argument(
        "--concurrent-requests",
        type=_count,
        help=f"(b) requests per contender and round (default {defaults.concurrent_requests})",
    )
    parser.add_argument(
        "--rounds", type=_count, help=f"(b) rounds of every contender (default {defaults.rounds})"
    )
    parser.add_argument(
        "--cold-starts",
        type=_count,
        help=f"(c) new processes per contender (default {defaults.cold_starts})",
    )
    parser.add_argument("--turns", type=_count, help=f"(d) turns (default {defaults.turns})")
    parser.add_argument(
        "--cpu-requests",
        type=_count,
        help=f"(e) long responses per contender and backend (default {defaults.cpu_requests})",
    )
    parser.add_argument(
        "--idle-connections",
        type=_count,
        help=f"(e) idle connections for the memory figure (default {defaults.idle_connections})",
    )
    parser.add_argument(
        "--handshake-delay-ms",
        type=float,
        default=0.0,
        help="milliseconds the emulator adds to every WebSocket upgrade, to model the network "
        "round trips of a real handshake (TCP + TLS + upgrade: about three); default 0, "
        "loopback only, which flatters the contenders that open connections",
    )
    parser.add_argument(
        "--session-tickets",
        type=_whole_number(0),
        metavar="N",
        help="TLS 1.3 session tickets the emulator sends after each handshake (default "
        f"{defaults.session_tickets}: no contender resumes sessions, and with tickets the "
        "SDK's WebSocket transport races with itself, stalling, failing or crashing now and "
        "then; 2 is what OpenSSL and real endpoints send)",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        metavar="SECONDS",
        help="sys.setswitchinterval() for the client process, the same for every contender "
        "(Python's default is 0.005); threads that hand connections to each other wait up to "
        "this long for the GIL, which (b) shows",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        metavar="PATH",
        help=f"where to write the figures (default {DEFAULT_JSON.relative_to(ROOT)})",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target does not hold")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    chosen: dict[str, Any] = dict(QUICK) if args.quick else {}
    for field in dataclasses.fields(Settings):
        value = getattr(args, field.name, None)
        if value is not None and field.name not in ("quick", "handshake_delay_ms"):
            chosen[field.name] = value
    return Settings(**chosen, quick=args.quick, handshake_delay_ms=args.handshake_delay_ms)


def _emulator(settings: Settings, **options: Any) -> EmulatorProcess:
    return EmulatorProcess(
        tls=True,
        handshake_delay=settings.handshake_delay_ms / 1000,
        session_tickets=settings.session_tickets,
        **options,
    )


def _run_scenario(key: str, settings: Settings, shared: Optional[EmulatorProcess]) -> Any:
    module = SCENARIOS[key][1]
    if key == "d":
        # Its own emulator: the input cost must not slow the other scenarios' requests.
        with _emulator(settings, input_cost_per_kb=settings.input_cost_per_kb) as emulator:
            return module.run(emulator, settings)
    assert shared is not None
    target = C.Target.of(shared)
    if key == "b":
        return module.run(target, settings, shared.stats)
    return module.run(target, settings)


def _checks(key: str, figures: Any) -> list[Check]:
    module = SCENARIOS[key][1]
    found: list[Check] = getattr(module, "checks", lambda _: [])(figures)
    return found


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    keys = [key.strip() for key in args.scenarios.split(",") if key.strip()]
    unknown = [key for key in keys if key not in SCENARIOS]
    if unknown:
        _parser().error(f"unknown scenario(s) {', '.join(unknown)}; choose from a,b,c,d,e")
    settings = _settings(args)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    command = "python -m benchmarks" + (" " + " ".join(argv) if argv else "")
    if argv is None:
        command = "python -m benchmarks " + " ".join(sys.argv[1:])
    header = (
        f"oaiws {oaiws.__version__} benchmarks; python {platform.python_version()} on "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; JSON {_json.BACKEND}; "
        f"TLS on, {settings.session_tickets} session tickets; "
        f"handshake delay {settings.handshake_delay_ms:g} ms; "
        f"switch interval {sys.getswitchinterval() * 1000:g} ms"
    )
    print(header)
    print(f"command: {command.strip()}")
    print("floor (x floor = 1.00): " + C.LABELS[C.NAMES[0]])
    started = time.perf_counter()
    results: dict[str, Any] = {}
    checks: list[Check] = []
    shared: Optional[EmulatorProcess] = None
    try:
        if any(key != "d" for key in keys):
            shared = _emulator(settings).start()
        for key in keys:
            title = SCENARIOS[key][0]
            began = time.perf_counter()
            figures = _run_scenario(key, settings, shared)
            figures["seconds"] = round(time.perf_counter() - began, 1)
            results[key] = figures
            print(f"\n({key}) {title}  [{figures['seconds']:.0f} s]")
            print(SCENARIOS[key][1].table(figures))
            sys.stdout.flush()
            checks += _checks(key, figures)
    finally:
        if shared is not None:
            shared.stop()
    print("\ntargets")
    for check in checks:
        verdict = {True: "holds ", False: "MISSED", None: "n/a   "}[check.holds]
        print(f"  [{verdict}] ({check.scenario}) {check.target}: {check.measured}")
    elapsed = time.perf_counter() - started
    print(f"\ndone in {elapsed:.0f} s")
    document = {
        "oaiws_version": oaiws.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "json_backend": _json.BACKEND,
        "command": command.strip(),
        "settings": dataclasses.asdict(settings),
        "contenders": {name: C.LABELS[name] for name in C.NAMES},
        "seconds": round(elapsed, 1),
        "scenarios": results,
        "targets": [check.as_dict() for check in checks],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"figures written to {args.json}")
    if args.strict and any(check.holds is False for check in checks):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
