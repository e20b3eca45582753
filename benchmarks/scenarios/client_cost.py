"""(e) What the client itself costs: CPU per event, and memory per idle pooled connection.

Both are measured in child processes, so that the JSON backend can be chosen per process
(``OAIWS_JSON=json`` forces the standard library; without it oaiws and the raw loops use
orjson, the ``fast`` extra) and so that one measurement's allocations never blur another's.

CPU: every contender reads ``cpu_requests`` long responses (200 deltas), in shuffled blocks
of ``block`` consecutive requests (``common.in_blocks``); ``time.process_time()`` (every
thread of the client process: the SDK's reader threads and the pool's care thread count too;
the emulator runs in another process) is summed over its requests and divided by the events
it read. The floor, ``raw_kept``, is the bare loop: ``ws.recv()`` and ``loads`` and a look at
the type, nothing else. Contenders that open a connection per request pay its TLS handshake
in CPU too.

Memory: the resident set (``/proc/self/statm``) before and after opening ``idle_connections``
idle connections, divided by their number. One connection is opened first by a throwaway
instance so that one-time costs (lazy imports, TLS contexts) stay out of the delta; the
delta still holds the second instance's own small construction. ``oaiws`` opens them with
``min_connections`` (in its care thread, one at a time); ``sdk_http`` gets httpx to keep that
many only by running that many requests at once, so its figure also holds what those threads
leave behind (glibc keeps finished threads' stacks for reuse). Contenders 2 and 3 keep no
idle connection, so they show ``-``.

Child: ``python -m benchmarks.scenarios.client_cost cpu|memory [NAME COUNT]`` with
``BENCH_TARGET``, ``BENCH_CPU_REQUESTS`` and ``BENCH_BLOCK`` in the environment; it prints one
JSON line.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import contenders as C  # noqa: E402 - run as a script too
from benchmarks.scenarios.common import (  # noqa: E402
    Check,
    Settings,
    failure_lines,
    fmt,
    in_blocks,
    run_child,
)
from benchmarks.stats import ratio  # noqa: E402

BACKENDS = ("orjson", "json")  # with and without the fast extra
MEMORY_CONTENDERS = ("raw_kept", "sdk_ws_kept", "sdk_http", "oaiws")
LONG = 200


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None  # not Linux: no cheap, exact resident set size


def _cpu_child(target: C.Target, requests: int, block: int) -> dict[str, Any]:
    from oaiws import _json  # noqa: PLC0415

    built = {name: C.make(name, target) for name in C.NAMES}
    request = C.fields(LONG, "cpu")
    cpu = dict.fromkeys(C.NAMES, 0.0)
    events = dict.fromkeys(C.NAMES, 0)
    failures: dict[str, list[str]] = {}
    try:
        for _ in range(3):  # warm: connections, caches, first-use imports
            for contender in built.values():
                C.attempt(contender, request, failures)
        gc.collect()
        for name in in_blocks(C.NAMES, requests, block):
            contender = built[name]
            started = time.process_time()
            done = C.attempt(contender, request, failures)
            spent = time.process_time() - started
            if done is not None:
                cpu[name] += spent
                events[name] += done[0]
    finally:
        for contender in built.values():
            contender.close()
    return {
        "backend": _json.BACKEND,
        "floor_loads": f"{C.json_loads().__module__}.loads",
        "us_per_event": {name: round(cpu[name] / events[name] * 1e6, 3) for name in C.NAMES},
        "events": events,
        "failures": failures,
    }


def _memory_child(target: C.Target, name: str, count: int) -> dict[str, Any]:
    from oaiws import _json  # noqa: PLC0415

    warm = C.make(name, target, max_connections=1)
    C.first_answer(warm, C.fields(1, "memory"), {})
    gc.collect()
    before = _rss_bytes()
    options = {"max_connections": count, "min_connections": count} if name == "oaiws" else {}
    contender = C.make(name, target, **options)
    contender.open_idle(count)
    if isinstance(contender, C.OAIWS):
        opened = contender.pool_stats()["connections_opened"]
        assert opened == count, f"the pool opened {opened} connections, not {count}"
    time.sleep(0.2)
    gc.collect()
    after = _rss_bytes()
    contender.close()
    warm.close()
    per = None if before is None or after is None else (after - before) / count / 1024
    return {
        "backend": _json.BACKEND,
        "kb_per_connection": None if per is None else round(per, 1),
        "connect_failures": getattr(contender, "connect_failures", 0),
    }


def _spawn(
    target: C.Target,
    backend: str,
    *args: str,
    crashes: dict[str, list[str]],
    cpu_requests: int = 0,
    block: int = 1,
    tries: int = 3,
) -> dict[str, Any]:
    """Run one measurement in a child process and return what it printed.

    A child that fails is recorded in ``crashes`` and run again, up to ``tries`` times: the
    SDK's WebSocket transport, whose reader thread shares one SSL object with the thread
    writing the upgrade (see contenders._SDK), now and then ends a process that holds many
    of its connections with a heap corruption ("corrupted double-linked list"). Such a
    crash is the SDK's, and must be reported, not end the run.
    """
    env = {
        **os.environ,
        "BENCH_TARGET": target.to_json(),
        "BENCH_CPU_REQUESTS": str(cpu_requests),
        "BENCH_BLOCK": str(block),
    }
    env.pop("OAIWS_JSON", None)
    if backend == "json":
        env["OAIWS_JSON"] = "json"
    key = f"{' '.join(args)} ({backend})"
    _, out = run_child(
        "benchmarks.scenarios.client_cost",
        list(args),
        env=env,
        failures=crashes,
        key=key,
        timeout=600,
        tries=tries,
    )
    found: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if found["backend"] != backend:
        # orjson is not installed: the "fast" column would silently measure the stdlib.
        found["unavailable"] = True
    return found


def run(target: C.Target, settings: Settings) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "cpu_requests": settings.cpu_requests,
        "block": settings.block,
        "deltas": LONG,
        "idle_connections": settings.idle_connections,
        "cpu": {},
        "memory": {},
        "child_failures": {},
    }
    crashes: dict[str, list[str]] = figures["child_failures"]
    for backend in BACKENDS:
        cpu = _spawn(
            target,
            backend,
            "cpu",
            crashes=crashes,
            cpu_requests=settings.cpu_requests,
            block=settings.block,
        )
        floor = cpu["us_per_event"][C.NAMES[0]]
        cpu["x_floor"] = {name: ratio(us, floor) for name, us in cpu["us_per_event"].items()}
        figures["cpu"][backend] = cpu
    count = settings.idle_connections
    stalls: dict[str, int] = {}
    for backend in BACKENDS:
        row: dict[str, Optional[float]] = dict.fromkeys(C.NAMES)
        for name in MEMORY_CONTENDERS:
            # Only oaiws and the raw loop decode with the chosen backend; the SDK never does,
            # so it is measured once, with the fast column.
            if backend == "json" and name.startswith("sdk"):
                continue
            found = _spawn(target, backend, "memory", name, str(count), crashes=crashes)
            row[name] = found["kb_per_connection"]
            if found["connect_failures"]:
                stalls[name] = stalls.get(name, 0) + found["connect_failures"]
        figures["memory"][backend] = row
    figures["memory_connect_stalls"] = stalls
    return figures


def checks(figures: dict[str, Any]) -> list[Check]:
    found = []
    for backend, cpu in figures["cpu"].items():
        if cpu.get("unavailable"):
            found.append(Check("e", f"{backend}: CPU per event", "orjson not installed", None))
            continue
        share = cpu["x_floor"]["oaiws"] or 0.0
        found.append(
            Check(
                "e",
                f"{backend}: oaiws CPU per event <= 1.2x a bare recv + loads loop",
                f"{share:.3f}x ({cpu['us_per_event']['oaiws']:.2f} vs "
                f"{cpu['us_per_event']['raw_kept']:.2f} us)",
                share <= 1.2,
            )
        )
        us = cpu["us_per_event"]
        over_http = ratio(us["oaiws_http"], us["oaiws"]) or 0.0
        found.append(
            Check(
                "e",
                f"{backend}: oaiws over HTTP, CPU per event against over WebSocket (reported)",
                f"{over_http:.3f}x ({us['oaiws_http']:.2f} vs {us['oaiws']:.2f} us)",
                None,
            )
        )
    return found


def table(figures: dict[str, Any]) -> str:
    backends = list(figures["cpu"])
    lines = [
        f"CPU per event: {figures['cpu_requests']} responses of {figures['deltas']} deltas each, "
        f"in shuffled blocks of {figures.get('block', 1)}; "
        f"memory: RSS delta over {figures['idle_connections']} idle connections",
        f"  {'contender':<34}"
        + "".join(f"{'us/event ' + b:>16}{'x floor':>9}" for b in backends)
        + "".join(f"{'KB/conn ' + b:>15}" for b in backends),
    ]
    for name in C.NAMES:
        line = f"  {C.LABELS[name]:<34}"
        for backend in backends:
            cpu = figures["cpu"][backend]
            line += f"{cpu['us_per_event'][name]:>16.2f}{fmt(cpu['x_floor'][name], '.2f', 'x'):>9}"
        for backend in backends:
            line += f"{fmt(figures['memory'][backend][name], '.1f'):>15}"
        lines.append(line)
    for backend in backends:
        lines += failure_lines(figures["cpu"][backend].get("failures", {}))
    for name, stalls in figures.get("memory_connect_stalls", {}).items():
        lines.append(f"  memory: {name}: {stalls} upgrade(s) failed and were retried")
    for what, failed in figures.get("child_failures", {}).items():
        lines.append(
            f"  child process {what} failed {len(failed)} time(s) and was run again: "
            f"{'; '.join(sorted(set(failed)))[:300]}"
        )
    return "\n".join(lines)


def _main(argv: list[str]) -> None:
    target = C.Target.from_json(os.environ["BENCH_TARGET"])
    if argv[0] == "cpu":
        requests = int(os.environ["BENCH_CPU_REQUESTS"])
        result = _cpu_child(target, requests, int(os.environ.get("BENCH_BLOCK", "1")))
    else:
        result = _memory_child(target, argv[1], int(argv[2]))
    print(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1:])
