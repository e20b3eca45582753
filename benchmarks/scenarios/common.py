"""What every scenario shares: the run's settings and the checks against the targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Settings:
    """One run's knobs (``python -m benchmarks --help`` documents each)."""

    requests: int = 200  # (a): requests per contender and length
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


def rotated(names: tuple[str, ...], turn: int) -> list[str]:
    """The contenders in a different order each round, so that drift in the machine (another
    process waking up, the CPU clocking down) hits each of them equally."""
    shift = turn % len(names)
    return list(names[shift:] + names[:shift])


def fmt(value: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def failure_lines(failures: dict[str, list[str]]) -> list[str]:
    """Requests that failed (left out of the figures, never hidden): one line per contender."""
    lines = []
    for name, errors in failures.items():
        distinct = sorted(set(errors))
        lines.append(f"  failed: {name}: {len(errors)} request(s): {'; '.join(distinct)[:300]}")
    return lines
