"""What every scenario shares: the run's settings and the checks against the targets."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class Settings:
    """One run's knobs (``python -m benchmarks --help`` documents each)."""

    requests: int = 200  # (a): requests per contender and length
    block: int = 10  # (a), (e): consecutive requests of one contender
    warmup: int = 10  # (a): unmeasured requests per contender first
    concurrent_requests: int = 640  # (b): requests over all threads, per contender and round
    threads: int = 32  # (b)
    pool_size: int = 8  # (b): oaiws max_connections, and the floor's kept connections
    rounds: int = 3  # (b): rounds, each running every contender once
    cold_starts: int = 5  # (c): new processes per contender
    turns: int = 20  # (d)
    tool_loop_repeats: int = 3  # (d)
    input_cost_per_kb: float = 0.002  # (d): emulator seconds per KB of context read
    cpu_requests: int = 60  # (e): long responses per contender and backend
    idle_connections: int = 100  # (e)
    handshake_delay_ms: float = 0.0
    # TLS 1.3 session tickets per handshake: none by default, since they make the SDK's
    # WebSocket transport race with itself (docs/emulator.md, TLS) and no contender uses them.
    session_tickets: int = 0
    quick: bool = False


@dataclass
class Check:
    """One target: what it says, the measured value, and whether it holds."""

    scenario: str
    target: str
    measured: str
    holds: Optional[bool]  # None: could not be evaluated in this run
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "target": self.target,
            "measured": self.measured,
            "holds": self.holds,
        }


def shuffled_rounds(names: tuple[str, ...], count: int, seed: int = 0) -> Iterator[list[str]]:
    """``count`` rounds of the contenders, each in a fresh order (seeded, so runs repeat).

    Drift in the machine (another process waking up, the CPU clocking down) then hits each
    contender alike, and so does the aftermath of the previous contender's request: over
    many rounds every contender follows every other one equally often. A fixed rotation
    keeps the neighbours: each contender always runs right after the same one, and whoever
    follows a heavy contender pays for its aftermath (measured: oaiws, always right after
    the SDK over HTTP, read 1.23x the floor, which always ran right after oaiws; 1.08x with
    the same requests shuffled).
    """
    rng = random.Random(seed)
    for _ in range(count):
        order = list(names)
        rng.shuffle(order)
        yield order


def in_blocks(names: tuple[str, ...], requests: int, block: int) -> Iterator[str]:
    """Which contender runs each request: ``requests`` for each, in blocks of ``block``
    consecutive requests of one contender, the blocks of every round shuffled.

    A program makes its requests one after another with one library, not alternating
    between six; blocks measure that, while the shuffled rounds keep drift fair. The first
    request of a block still runs right after another contender's, and is counted.
    """
    rounds = -(-requests // block)
    for number, order in enumerate(shuffled_rounds(names, rounds)):
        size = min(block, requests - number * block)
        for name in order:
            for _ in range(size):
                yield name


def fmt(value: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def failure_lines(failures: dict[str, list[str]]) -> list[str]:
    """Requests that failed (left out of the figures, never hidden): one line per contender."""
    lines = []
    for name, errors in failures.items():
        distinct = sorted(set(errors))
        lines.append(f"  failed: {name}: {len(errors)} request(s): {'; '.join(distinct)[:300]}")
    return lines


def run_child(
    module: str,
    args: list[str],
    *,
    env: dict[str, str],
    failures: dict[str, list[str]],
    key: str,
    timeout: float,
    tries: int = 3,
) -> tuple[float, str]:
    """Run ``python -m module *args`` until it exits 0, at most ``tries`` times; returns when
    the successful attempt was spawned (``time.monotonic()``) and what it printed.

    Every failed attempt is recorded in ``failures[key]`` (exit status and last line): the
    SDK's WebSocket transport now and then fails a TLS upgrade, or crashes a process holding
    many of its connections (see contenders._SDK), and that must be reported, not end the
    run. A new attempt is a new process, so a retried measurement is still a clean one.
    """
    for attempt_number in range(1, tries + 1):
        spawned = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode == 0:
            return spawned, result.stdout
        last_line = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        failures.setdefault(key, []).append(f"exit {result.returncode}: {last_line}")
        if attempt_number == tries:
            raise RuntimeError(
                f"python -m {module} {' '.join(args)} failed {tries} times:\n{result.stderr}"
            )
    raise AssertionError("unreachable: tries must be at least 1")
