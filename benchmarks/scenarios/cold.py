"""(c) Cold start: the first request of a new process.

For each contender a fresh Python process is started that imports the library, connects and
completes one short request (20 deltas). Reported: wall time from just before the process
was spawned to its terminal event (interpreter start-up included, the same for everyone),
and, measured inside the child, the import of the library alone and the first request
alone (client construction, handshake, request). ``time.monotonic()`` is one system-wide
clock on Linux and macOS, so the parent and the child can subtract each other's readings.

The child is this module run as a script: ``python -m benchmarks.scenarios.cold NAME``, with
the emulator's coordinates in the ``BENCH_TARGET`` environment variable.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent


def _child(name: str) -> None:
    imported_at = time.monotonic()
    # What a program of this contender imports before doing anything else.
    if name in ("raw_kept", "raw_fresh"):
        import websocket  # noqa: F401, PLC0415
    elif name.startswith("sdk"):
        import openai  # noqa: F401, PLC0415
    else:
        import oaiws  # noqa: F401, PLC0415
    library_s = time.monotonic() - imported_at
    sys.path.insert(0, str(ROOT))
    from benchmarks import contenders as C  # noqa: PLC0415 - after the timed import

    target = C.Target.from_json(os.environ["BENCH_TARGET"])
    first_at = time.monotonic()
    contender = C.make(name, target)
    events, _ = contender.request(C.fields(20, "cold"))
    done = time.monotonic()
    contender.close()
    print(
        json.dumps(
            {
                "done": done,
                "import_ms": library_s * 1e3,
                "first_request_ms": (done - first_at) * 1e3,
                "events": events,
            }
        )
    )


def run(target: Any, settings: Any) -> dict[str, Any]:
    from benchmarks import contenders as C  # noqa: PLC0415
    from benchmarks.scenarios.common import shuffled_rounds  # noqa: PLC0415
    from benchmarks.stats import median  # noqa: PLC0415

    env = {**os.environ, "BENCH_TARGET": target.to_json(), "PYTHONDONTWRITEBYTECODE": "1"}
    samples: dict[str, dict[str, list[float]]] = {
        name: {"total_ms": [], "import_ms": [], "first_request_ms": []} for name in C.NAMES
    }
    failures: dict[str, list[str]] = {}
    for order in shuffled_rounds(C.NAMES, settings.cold_starts):
        for name in order:
            spawned, child = _start(name, env, failures)
            samples[name]["total_ms"].append((child["done"] - spawned) * 1e3)
            samples[name]["import_ms"].append(child["import_ms"])
            samples[name]["first_request_ms"].append(child["first_request_ms"])
    rows = {
        name: {key: round(median(values), 2) for key, values in measured.items()}
        for name, measured in samples.items()
    }
    floor = rows[C.NAMES[0]]["total_ms"]
    for row in rows.values():
        row["total_x_floor"] = round(row["total_ms"] / floor, 3)
    return {"starts": settings.cold_starts, "contenders": rows, "failures": failures}


def _start(
    name: str, env: dict[str, str], failures: dict[str, list[str]]
) -> tuple[float, dict[str, Any]]:
    """One cold start of ``name`` in a new process: when it was spawned and what it measured.
    A failed start is recorded and started again (``common.run_child``)."""
    from benchmarks.scenarios.common import run_child  # noqa: PLC0415

    spawned, out = run_child(
        "benchmarks.scenarios.cold", [name], env=env, failures=failures, key=name, timeout=120
    )
    child: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return spawned, child


def table(figures: dict[str, Any]) -> str:
    from benchmarks import contenders as C  # noqa: PLC0415
    from benchmarks.scenarios.common import failure_lines  # noqa: PLC0415

    lines = [
        f"new process -> one 20-delta response; median of {figures['starts']} starts each",
        f"  {'contender':<34}{'total ms':>10}{'x floor':>9}{'import ms':>11}{'1st req ms':>12}",
    ]
    for name in C.NAMES:
        row = figures["contenders"][name]
        lines.append(
            f"  {C.LABELS[name]:<34}{row['total_ms']:>10.1f}{row['total_x_floor']:>8.2f}x"
            f"{row['import_ms']:>11.1f}{row['first_request_ms']:>12.1f}"
        )
    lines += failure_lines(figures.get("failures", {}))
    return "\n".join(lines)


if __name__ == "__main__":
    _child(sys.argv[1])
