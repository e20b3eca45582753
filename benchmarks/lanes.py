"""Lanes: ``Client(lanes=True)`` against the default pool (``lanes=False``), in one run.

Every part runs both modes against the same emulator, which runs in its own process
(``EmulatorProcess``, plain TCP), so that ``time.process_time()`` of this process is the
client's CPU alone (every thread of it: callers, lane readers, pool maintenance).

(a) Conversations with think time. 64 ``client.conversation(store=False)``, each in its own
    thread, over ``max_connections=4``; each sends ``turns`` turns with a think time between
    them (uniformly random, always longer than ``affinity_wait``, which is set to 1.0 s, the
    default, in both modes). With lanes each conversation keeps a lane between turns, so a
    continuation finds the chain in that lane's server-side cache; without lanes its
    connection is held for its next turn for at most ``affinity_wait``, so after a longer
    think time the turn most likely lands on a connection that does not hold its chain and
    replays the whole transcript. The first message carries a long document, so that a
    replay visibly costs bytes (the instructions are sent with every turn in both modes, so
    they would not tell the two apart), and the emulator charges ``input_cost_per_kb`` for
    the context it must read, so that a replay also costs server time. Reported: the
    cache-hit rate of continuation turns (the emulator's ``cache_hits`` over the turns after
    the first, cross-checked with the client's ``lane_hits``/``affinity_hits`` and
    ``replays``), bytes the server received per turn, replays, connections, wall time and
    turn latency. Both modes get the same messages and the same think times (seeded), and
    must get the same answers. The issue's goal: >= 95% cache hits with lanes.
(b) Per-event cost of a multiplexed connection. One thread streams
    ``client.generate_response`` of 200 deltas (``delta_delay=0``) again and again, lanes
    against default (one connection each; requests in shuffled blocks of one mode, both
    clients warmed up first): client CPU per event, the gap between consecutive events as the
    caller sees them (median, p99) and time to first event. Then 8 threads stream at once,
    over 1 multiplexed connection (lanes) or 8 connections (default), in alternating rounds.
(c) 64 concurrent single responses. 64 threads each run ``create_response`` one after
    another (16 deltas, 10 ms apart, so they overlap) over 4 multiplexed connections
    (``lanes=True, max_connections=4``) or 64 plain ones (``lanes=False,
    max_connections=64``); a fresh client per run, so its handshakes are part of it.
    Throughput, latency p50/p99, handshakes and client CPU per response.

Runs alternate A B B A ... (lanes first) over each part's rounds; a quick run does A B once.
The emulator's own CPU (from ``/proc``, where there is one) is shown beside the client's, so
that a throughput figure can be read as bound by one side or the other. Sleeps here
are users' think time, never a stand-in for waiting on something: threads start together on
a barrier and are joined.

Run: python -m benchmarks.lanes [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import random
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import oaiws
from benchmarks.scenarios.common import in_blocks
from benchmarks.stats import percentile, summary, write_figures
from oaiws import _json
from oaiws.testing import EmulatorProcess, expected_text

MODEL = "gpt-test"
AFFINITY_WAIT = 1.0  # the default, set explicitly in both modes
CONVERSATIONS = 64
CONVERSATION_CONNECTIONS = 4
STREAM_DELTAS = 200
CONCURRENT_STREAMS = 8
SINGLES_THREADS = 64
SINGLES_LANE_CONNECTIONS = 4
SINGLES_DELTAS = 16
SINGLES_DELTA_DELAY = 0.01
REQUEST_TIMEOUT = 120.0  # bounds every request, so a hang ends as an error, not a stuck run
MODES = ("lanes", "default")

INSTRUCTIONS = "You are a careful assistant. Answer briefly, and quote the document when asked."


def _document() -> str:
    """About 16 KB of text for the first message: what every replay sends again."""
    paragraphs = [
        f"Section {n}. The quarterly report lists the shipments of warehouse {n % 7}, the "
        f"delays on route {n % 11}, the staff rota for week {n} and the open tickets of the "
        "support desk, with a note on each that explains its cause and the fix agreed with "
        "the customer. Figures are in thousands of units unless stated otherwise."
        for n in range(60)
    ]
    return "\n".join(paragraphs)


DOCUMENT = _document()


@dataclass(frozen=True)
class Settings:
    turns: int = 6  # (a) per conversation
    think_min: float = 1.5  # (a) seconds between turns
    think_max: float = 2.5
    rounds: int = 2  # (a): A B, then B A
    stream_requests: int = 100  # (b) single stream: responses per mode
    stream_block: int = 10  # (b) consecutive responses of one mode
    concurrent_per_thread: int = 30  # (b) 8 streams: responses per thread and round
    concurrent_rounds: int = 4  # (b) 8 streams: A B, B A, A B, B A
    singles_per_thread: int = 20  # (c) responses per thread and run
    singles_rounds: int = 4  # (c)
    input_cost_per_kb: float = 0.002  # (a) emulator seconds per KB of context read
    conversation_deltas: int = 16  # (a)
    conversation_delta_delay: float = 0.005  # (a)
    quick: bool = False


QUICK = Settings(
    turns=3,
    think_min=1.1,
    think_max=1.3,
    rounds=1,
    stream_requests=20,
    stream_block=5,
    concurrent_per_thread=3,
    concurrent_rounds=1,
    singles_per_thread=2,
    singles_rounds=1,
    quick=True,
)


class Misbehaved(RuntimeError):
    """A request failed, hung or got a wrong answer: reported, never worked around."""


def _server_cpu(emulator: Any) -> Optional[float]:
    """CPU seconds the emulator's process has used (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        with open(f"/proc/{emulator.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError, TypeError):
        return None


def _spent(before: Optional[float], after: Optional[float]) -> Optional[float]:
    return None if before is None or after is None else after - before


def _orders(rounds: int) -> Iterator[tuple[int, str]]:
    """(round, mode): A B, B A, A B, ... so that neither mode always runs first."""
    for number in range(rounds):
        order = MODES if number % 2 == 0 else MODES[::-1]
        for mode in order:
            yield number + 1, mode


def _client(emulator: Any, mode: str, max_connections: int) -> oaiws.Client:
    return oaiws.Client(
        api_key=emulator.api_key,
        base_url=emulator.base_url,
        max_connections=max_connections,
        lanes=mode == "lanes",
        affinity_wait=AFFINITY_WAIT,
    )


def _run_threads(
    count: int,
    target: Callable[[int], object],
    *,
    limit: float,
    what: str,
    sample: Optional[Callable[[], None]] = None,
) -> tuple[float, float]:
    """Run ``target(i)`` in ``count`` threads started together on a barrier; returns (wall
    seconds, CPU seconds of this process) and raises ``Misbehaved`` on any error or hang.
    ``sample()``, if given, is called about every 0.1 s meanwhile (to watch gauges)."""
    barrier = threading.Barrier(count + 1)
    errors: list[str] = []

    def body(index: int) -> None:
        barrier.wait()
        try:
            target(index)
        except BaseException:  # every failure is reported below
            errors.append(f"thread {index}: {traceback.format_exc(limit=8)}")

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    cpu, wall = time.process_time(), time.perf_counter()
    barrier.wait()
    deadline = time.monotonic() + limit
    for thread in threads:
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(0.1 if sample is not None else max(0.0, deadline - time.monotonic()))
            if sample is not None:
                sample()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    hung = [i for i, thread in enumerate(threads) if thread.is_alive()]
    if hung:
        raise Misbehaved(f"{what}: {len(hung)} thread(s) still running after {limit:g} s: {hung}")
    if errors:
        raise Misbehaved(f"{what}: {len(errors)} thread(s) failed; the first:\n{errors[0]}")
    return wall, cpu


# -- (a) conversations with think time ------------------------------------------------------


def _message(conversation: int, turn: int) -> str:
    if turn == 0:
        return f"Conversation {conversation}. Here is the document:\n{DOCUMENT}\nSummarise it."
    return f"Conversation {conversation}, question {turn}: what does section {turn * 7} say?"


# Watched during (a) (present with lanes only): their highest values, sampled every 0.1 s.
_GAUGES = ("lane_connections", "lanes_active", "lanes_leased", "connections_open")


def _conversations(
    emulator: Any, mode: str, settings: Settings
) -> tuple[dict[str, Any], dict[tuple[int, int], str]]:
    turns = settings.turns
    client = _client(emulator, mode, CONVERSATION_CONNECTIONS)
    latencies: list[float] = []
    answers: dict[tuple[int, int], str] = {}
    lock = threading.Lock()

    def converse(index: int) -> None:
        # Seeded per conversation: both modes get the same think times.
        rng = random.Random(f"lanes-a-{index}")
        with client.conversation(
            model=MODEL, instructions=INSTRUCTIONS, store=False, timeout=REQUEST_TIMEOUT
        ) as conversation:
            for turn in range(turns):
                if turn:
                    time.sleep(rng.uniform(settings.think_min, settings.think_max))  # think
                started = time.perf_counter()
                response = conversation.send(_message(index, turn))
                took = time.perf_counter() - started
                if response.status != "completed":
                    raise Misbehaved(f"conversation {index} turn {turn}: {response!r}")
                with lock:
                    latencies.append(took)
                    answers[(index, turn)] = response.output_text

    peaks = dict.fromkeys(_GAUGES, 0)

    def sample() -> None:
        gauges = client.pool_stats()
        for name in _GAUGES:
            peaks[name] = max(peaks[name], gauges.get(name, 0))

    emulator.reset_stats()
    try:
        wall, _ = _run_threads(
            CONVERSATIONS,
            converse,
            limit=turns * (settings.think_max + REQUEST_TIMEOUT),
            what=f"(a) conversations, {mode}",
            sample=sample,
        )
        client_stats = client.pool_stats()
    finally:
        client.close()
    server = emulator.stats()
    total = CONVERSATIONS * turns
    continuations = CONVERSATIONS * (turns - 1)
    client_hits = client_stats["lane_hits"] if mode == "lanes" else client_stats["affinity_hits"]
    row = {
        "turns": total,
        "continuation_turns": continuations,
        "cache_hits": server["cache_hits"],
        "cache_misses": server["cache_misses"],
        "previous_response_not_found": server["previous_response_not_found"],
        "hydrations": server["hydrations"],
        "cache_hit_rate": server["cache_hits"] / continuations,
        "bytes_received": server["bytes_received"],
        "bytes_per_turn": server["bytes_received"] / total,
        "input_kb_processed": server["input_kb_processed"],
        "server_requests": server["requests"],
        "handshakes": server["handshakes"],
        "client_hits": client_hits,
        "replays": client_stats["replays"],
        "lane_hits": client_stats["lane_hits"],
        "lane_misses": client_stats["lane_misses"],
        "lane_evictions": client_stats["lane_evictions"],
        "affinity_hits": client_stats["affinity_hits"],
        "affinity_misses": client_stats["affinity_misses"],
        "connections_opened": client_stats["connections_opened"],
        "seconds": wall,
        "turn_latency": summary(latencies),
        "peak_gauges": peaks,
        "client_stats": client_stats,  # every counter, e.g. requests_wait_ms (default only)
    }
    # The same story from both ends: every continuation either hit the cache or replayed.
    row["counters_agree"] = (
        client_hits == server["cache_hits"]
        and server["cache_hits"] + client_stats["replays"] == continuations
        and server["requests"] == total
    )
    return row, answers


def part_a(settings: Settings, out: Any) -> dict[str, Any]:
    out.write(
        f"(a) {CONVERSATIONS} store=false conversations (one thread each) over max_connections="
        f"{CONVERSATION_CONNECTIONS}, {settings.turns} turns each, think time uniform "
        f"{settings.think_min:g}-{settings.think_max:g} s between turns (affinity_wait="
        f"{AFFINITY_WAIT:g} s, the default); first message {len(DOCUMENT) / 1024:.1f} KB;"
        f" emulator: {settings.conversation_deltas} deltas"
        f" {settings.conversation_delta_delay * 1e3:g} ms apart,"
        f" {settings.input_cost_per_kb * 1e3:g} ms per KB of context read; order "
        f"{' '.join(mode for _, mode in _orders(settings.rounds))}\n"
    )
    runs: list[dict[str, Any]] = []
    reference: Optional[dict[tuple[int, int], str]] = None
    with EmulatorProcess(
        deltas=settings.conversation_deltas,
        delta_delay=settings.conversation_delta_delay,
        input_cost_per_kb=settings.input_cost_per_kb,
    ) as emulator:
        for number, mode in _orders(settings.rounds):
            row, answers = _conversations(emulator, mode, settings)
            if reference is None:
                reference = answers
            elif answers != reference:
                wrong = sorted(key for key in reference if answers.get(key) != reference[key])
                raise Misbehaved(
                    f"(a) {mode} round {number}: {len(wrong)} answer(s) differ from the first "
                    f"run's, e.g. conversation/turn {wrong[:5]}"
                )
            runs.append({"mode": mode, "round": number, **row})
    out.write(
        f"  {'run':12} {'hit rate':>8} {'hits':>6} {'client':>6} {'replays':>7}"
        f" {'evict':>5} {'conns':>5} {'B/turn':>8} {'KB read':>8} {'turn p50':>9}"
        f" {'turn p99':>9} {'wall s':>7} {'counters':>8}\n"
    )
    for run in runs:
        out.write(
            f"  {run['mode'] + ' #' + str(run['round']):12} {run['cache_hit_rate']:8.1%}"
            f" {run['cache_hits']:6d} {run['client_hits']:6d} {run['replays']:7d}"
            f" {run['lane_evictions']:5d} {run['connections_opened']:5d}"
            f" {run['bytes_per_turn']:8,.0f} {run['input_kb_processed']:8,.0f}"
            f" {run['turn_latency']['median_ms']:7.1f}ms {run['turn_latency']['p99_ms']:7.1f}ms"
            f" {run['seconds']:7.2f} {'agree' if run['counters_agree'] else 'DIFFER':>8}\n"
        )
    for run in runs:
        if run["mode"] == "lanes":
            peaks = run["peak_gauges"]
            out.write(
                f"  lanes #{run['round']} peaks (sampled every 0.1 s): lane_connections"
                f" {peaks['lane_connections']}, lanes_active {peaks['lanes_active']},"
                f" lanes_leased {peaks['lanes_leased']}\n"
            )
    totals = {mode: _a_totals([run for run in runs if run["mode"] == mode]) for mode in MODES}
    lanes, holds = totals["lanes"], totals["default"]
    out.write(
        "  hits: the emulator's cache_hits; client: lane_hits (lanes) or affinity_hits"
        " (default); B/turn: bytes the server received per turn; KB read: context the server"
        " processed; counters agree: client hits = cache hits and hits + replays ="
        " continuation turns\n"
        f"  over all runs: lanes {lanes['cache_hit_rate']:.1%} hits,"
        f" {lanes['bytes_per_turn']:,.0f} B/turn; default (holds) {holds['cache_hit_rate']:.1%}"
        f" hits, {holds['bytes_per_turn']:,.0f} B/turn"
        f" ({holds['bytes_per_turn'] / lanes['bytes_per_turn']:.1f}x lanes'); answers"
        " identical in every run\n\n"
    )
    return {"runs": runs, "totals": totals}


def _a_totals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    hits = sum(run["cache_hits"] for run in runs)
    continuations = sum(run["continuation_turns"] for run in runs)
    turns = sum(run["turns"] for run in runs)
    return {
        "runs": len(runs),
        "cache_hits": hits,
        "continuation_turns": continuations,
        "cache_hit_rate": hits / continuations,
        "bytes_per_turn": sum(run["bytes_received"] for run in runs) / turns,
        "replays": sum(run["replays"] for run in runs),
        "max_connections_opened": max(run["connections_opened"] for run in runs),
    }


# -- (b) per-event cost -----------------------------------------------------------------------


class _Timings:
    """Gaps between consecutive events, times to first event, events and texts of one mode."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self.first: list[float] = []
        self.events = 0
        self.responses = 0
        self.cpu = 0.0
        self.wall = 0.0
        self.server_cpu: Optional[float] = 0.0
        self.rounds: list[float] = []  # events per second of each round (8 streams)
        self.texts: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def stream(self, client: oaiws.Client, prompt: str) -> None:
        gaps: list[float] = []
        events = 0
        started = time.perf_counter()
        first = last = 0.0
        with client.generate_response(
            model=MODEL, input=prompt, store=False, timeout=REQUEST_TIMEOUT
        ) as stream:
            for _ in stream:
                now = time.perf_counter()
                if events:
                    gaps.append(now - last)
                else:
                    first = now - started
                last = now
                events += 1
            response = stream.response
        text = response.output_text if response is not None else "(no response)"
        with self.lock:
            self.gaps += gaps
            self.first.append(first)
            self.events += events
            self.responses += 1
            self.texts.append((prompt, text))

    def add_server_cpu(self, spent: Optional[float]) -> None:
        self.server_cpu = (
            None if spent is None or self.server_cpu is None else self.server_cpu + spent
        )

    def check(self, what: str, deltas: int) -> None:
        for prompt, text in self.texts:
            if text != expected_text(prompt, deltas=deltas):
                raise Misbehaved(f"{what}: wrong answer to {prompt!r}: {text[:200]!r}")

    def row(self) -> dict[str, Any]:
        return {
            "responses": self.responses,
            "events": self.events,
            "cpu_us_per_event": 1e6 * self.cpu / self.events,
            "emulator_cpu_us_per_event": None
            if self.server_cpu is None
            else 1e6 * self.server_cpu / self.events,
            "events_per_second": self.events / self.wall if self.wall else None,
            "gap_median_us": 1e6 * percentile(self.gaps, 0.5),
            "gap_p99_us": 1e6 * percentile(self.gaps, 0.99),
            "first_event_median_ms": 1e3 * percentile(self.first, 0.5),
            "first_event_p99_ms": 1e3 * percentile(self.first, 0.99),
            "events_per_second_by_round": self.rounds,
        }


def _warm(client: oaiws.Client, count: int) -> None:
    """``count`` responses at once, so that the pool holds its connections before measuring."""
    _run_threads(
        count,
        lambda i: client.create_response(model=MODEL, input=f"warm {i}", store=False),
        limit=REQUEST_TIMEOUT,
        what="warm-up",
    )


def part_b(settings: Settings, out: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with EmulatorProcess(deltas=STREAM_DELTAS, delta_delay=0.0) as emulator:
        # One stream at a time: shuffled blocks of one mode, both clients warm and open.
        clients = {mode: _client(emulator, mode, 1) for mode in MODES}
        timings = {mode: _Timings() for mode in MODES}
        try:
            for client in clients.values():
                _warm(client, 1)
            order = enumerate(in_blocks(MODES, settings.stream_requests, settings.stream_block))
            for mode, block in itertools.groupby(order, key=lambda pair: pair[1]):
                timing = timings[mode]
                server = _server_cpu(emulator)  # per block: /proc counts in clock ticks
                for number, _ in block:
                    cpu, wall = time.process_time(), time.perf_counter()
                    timing.stream(clients[mode], f"single stream {number}")
                    timing.wall += time.perf_counter() - wall
                    timing.cpu += time.process_time() - cpu
                timing.add_server_cpu(_spent(server, _server_cpu(emulator)))
            opened = {mode: clients[mode].pool_stats()["connections_opened"] for mode in MODES}
        finally:
            for client in clients.values():
                client.close()
        for mode in MODES:
            timings[mode].check(f"(b) single stream, {mode}", STREAM_DELTAS)
        figures["single"] = {
            mode: {**timings[mode].row(), "connections_opened": opened[mode]} for mode in MODES
        }

        # 8 streams at once: 1 multiplexed connection against 8 connections.
        sizes = {"lanes": 1, "default": CONCURRENT_STREAMS}
        clients = {mode: _client(emulator, mode, sizes[mode]) for mode in MODES}
        timings = {mode: _Timings() for mode in MODES}
        try:
            for client in clients.values():
                _warm(client, CONCURRENT_STREAMS)
            for number, mode in _orders(settings.concurrent_rounds):
                client, timing = clients[mode], timings[mode]

                def streams(
                    index: int,
                    client: oaiws.Client = client,
                    timing: _Timings = timing,
                    number: int = number,
                ) -> None:
                    for k in range(settings.concurrent_per_thread):
                        timing.stream(client, f"stream {index}.{k} of round {number}")

                server, events = _server_cpu(emulator), timing.events
                wall, cpu = _run_threads(
                    CONCURRENT_STREAMS,
                    streams,
                    limit=REQUEST_TIMEOUT * settings.concurrent_per_thread,
                    what=f"(b) {CONCURRENT_STREAMS} streams, {mode}",
                )
                timing.add_server_cpu(_spent(server, _server_cpu(emulator)))
                timing.rounds.append((timing.events - events) / wall)
                timing.wall += wall
                timing.cpu += cpu
            opened = {mode: clients[mode].pool_stats()["connections_opened"] for mode in MODES}
        finally:
            for client in clients.values():
                client.close()
        for mode in MODES:
            timings[mode].check(f"(b) {CONCURRENT_STREAMS} streams, {mode}", STREAM_DELTAS)
        figures["concurrent"] = {
            mode: {**timings[mode].row(), "connections_opened": opened[mode]} for mode in MODES
        }

    out.write(
        f"(b) streaming {STREAM_DELTAS}-delta responses (delta_delay 0): client CPU per event"
        " (this process, every thread), gap between consecutive events and time to first"
        " event as the caller sees them\n"
        f"  1 stream at a time: {settings.stream_requests} responses per mode in shuffled blocks"
        f" of {settings.stream_block}, one connection each, both clients warm\n"
    )
    _b_table(out, figures["single"], {"lanes": "lanes, 1 conn", "default": "default, 1 conn"})
    out.write(
        "    (gaps are as the caller sees them: with lanes a reader thread decodes ahead and"
        " queues events, so most come off the queue at once and the caller waits when it has"
        " caught up; emu: the emulator process's CPU)\n"
    )
    out.write(
        f"  {CONCURRENT_STREAMS} streams at once: {settings.concurrent_per_thread} responses per"
        " thread and round, rounds"
        f" {' '.join(mode for _, mode in _orders(settings.concurrent_rounds))}\n"
    )
    _b_table(
        out,
        figures["concurrent"],
        {"lanes": "lanes, 1 conn", "default": f"default, {CONCURRENT_STREAMS} conns"},
    )
    for mode in MODES:
        by_round = figures["concurrent"][mode]["events_per_second_by_round"]
        out.write(f"    ev/s by round, {mode}: {', '.join(f'{rate:,.0f}' for rate in by_round)}\n")
    out.write("\n")
    return figures


def _b_table(out: Any, rows: dict[str, dict[str, Any]], names: dict[str, str]) -> None:
    out.write(
        f"    {'mode':18} {'CPU us/ev':>9} {'x default':>9} {'emu us/ev':>9} {'ev/s':>8}"
        f" {'gap p50':>9} {'gap p99':>9} {'1st p50':>8} {'1st p99':>8} {'conns':>5}\n"
    )
    base = rows["default"]["cpu_us_per_event"]
    for mode in MODES:
        row = rows[mode]
        out.write(
            f"    {names[mode]:18} {row['cpu_us_per_event']:9.1f}"
            f" {row['cpu_us_per_event'] / base:8.2f}x"
            f" {_fmt(row['emulator_cpu_us_per_event'], '9.1f')} {row['events_per_second']:8,.0f}"
            f" {row['gap_median_us']:7.1f}us {row['gap_p99_us']:7.1f}us"
            f" {row['first_event_median_ms']:6.2f}ms {row['first_event_p99_ms']:6.2f}ms"
            f" {row['connections_opened']:5d}\n"
        )


def _fmt(value: Optional[float], spec: str) -> str:
    width = spec.split(".", maxsplit=1)[0]
    return f"{'-':>{width}}" if value is None else f"{value:{spec}}"


# -- (c) 64 concurrent single responses ----------------------------------------------------


def _singles(
    emulator: Any, mode: str, settings: Settings, number: int
) -> tuple[dict[str, Any], list[float]]:
    size = SINGLES_LANE_CONNECTIONS if mode == "lanes" else SINGLES_THREADS
    latencies: list[float] = []
    answers: list[tuple[str, str]] = []
    lock = threading.Lock()
    emulator.reset_stats()
    client = _client(emulator, mode, size)

    def ask(index: int) -> None:
        for k in range(settings.singles_per_thread):
            prompt = f"single {index}.{k} of round {number}"
            started = time.perf_counter()
            response = client.create_response(
                model=MODEL, input=prompt, store=False, timeout=REQUEST_TIMEOUT
            )
            took = time.perf_counter() - started
            with lock:
                latencies.append(took)
                answers.append((prompt, response.output_text))

    server_cpu = _server_cpu(emulator)
    try:
        wall, cpu = _run_threads(
            SINGLES_THREADS,
            ask,
            limit=REQUEST_TIMEOUT * settings.singles_per_thread,
            what=f"(c) singles, {mode}",
        )
        client_stats = client.pool_stats()
    finally:
        client.close()
    server_cpu = _spent(server_cpu, _server_cpu(emulator))
    server = emulator.stats()
    for prompt, text in answers:
        if text != expected_text(prompt, deltas=SINGLES_DELTAS):
            raise Misbehaved(f"(c) {mode}: wrong answer to {prompt!r}: {text[:200]!r}")
    count = len(latencies)
    row = {
        "mode": mode,
        "round": number,
        "max_connections": size,
        "responses": count,
        "seconds": wall,
        "responses_per_second": count / wall,
        "latency": summary(latencies),
        "cpu_us_per_response": 1e6 * cpu / count,
        "emulator_cpu_us_per_response": None if server_cpu is None else 1e6 * server_cpu / count,
        "connections_opened": client_stats["connections_opened"],
        "handshakes": server["handshakes"],
        "server_requests": server["requests"],
        "cpu_seconds": cpu,
        "emulator_cpu_seconds": server_cpu,
    }
    return row, latencies


def part_c(settings: Settings, out: Any) -> dict[str, Any]:
    out.write(
        f"(c) {SINGLES_THREADS} threads, each {settings.singles_per_thread} create_response one"
        f" after another ({SINGLES_DELTAS} deltas {SINGLES_DELTA_DELAY * 1e3:g} ms apart): lanes"
        f" over max_connections={SINGLES_LANE_CONNECTIONS} against default over"
        f" max_connections={SINGLES_THREADS}; a fresh client per run (handshakes included);"
        f" order {' '.join(mode for _, mode in _orders(settings.singles_rounds))}\n"
    )
    runs = []
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    with EmulatorProcess(deltas=SINGLES_DELTAS, delta_delay=SINGLES_DELTA_DELAY) as emulator:
        for number, mode in _orders(settings.singles_rounds):
            row, latencies = _singles(emulator, mode, settings, number)
            runs.append(row)
            samples[mode] += latencies
    totals = {}
    for mode in MODES:
        mine = [run for run in runs if run["mode"] == mode]
        count = sum(run["responses"] for run in mine)
        server = [run["emulator_cpu_seconds"] for run in mine]
        totals[mode] = {
            "mode": mode,
            "round": "all",
            "responses": count,
            "responses_per_second": count / sum(run["seconds"] for run in mine),
            "latency": summary(samples[mode]),
            "cpu_us_per_response": 1e6 * sum(run["cpu_seconds"] for run in mine) / count,
            "emulator_cpu_us_per_response": None
            if None in server
            else 1e6 * sum(cpu for cpu in server if cpu is not None) / count,
            "connections_opened": max(run["connections_opened"] for run in mine),
            "handshakes": max(run["handshakes"] for run in mine),
        }
    out.write(
        f"  {'run':12} {'resp/s':>8} {'p50':>9} {'p99':>9} {'CPU us/resp':>11}"
        f" {'emu us/resp':>11} {'conns':>5} {'handshakes':>10}\n"
    )
    for run in [*runs, *totals.values()]:
        out.write(
            f"  {run['mode'] + ' #' + str(run['round']):12} {run['responses_per_second']:8.1f}"
            f" {run['latency']['median_ms']:7.1f}ms {run['latency']['p99_ms']:7.1f}ms"
            f" {run['cpu_us_per_response']:11.0f}"
            f" {_fmt(run['emulator_cpu_us_per_response'], '11.0f')} {run['connections_opened']:5d}"
            f" {run['handshakes']:10d}\n"
        )
    out.write(
        "  #all: every run of the mode pooled (latencies pooled; conns and handshakes: the"
        " most of one run)\n\n"
    )
    return {"runs": runs, "totals": totals}


# -- the run ----------------------------------------------------------------------------------


def targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    lanes = figures["a"]["totals"]["lanes"]
    return [
        {
            "what": "(a) lanes: >= 95% of continuation turns are cache hits",
            "holds": lanes["cache_hit_rate"] >= 0.95,
            "result": f"{lanes['cache_hit_rate']:.1%} ({lanes['cache_hits']} of"
            f" {lanes['continuation_turns']})",
        }
    ]


def run(settings: Settings, out: Any = sys.stdout) -> dict[str, Any]:
    out.write(
        f"lanes benchmark{' (quick)' if settings.quick else ''}: python"
        f" {platform.python_version()}, {platform.system()} {platform.machine()},"
        f" {os.cpu_count()} CPUs; JSON {_json.BACKEND}; emulator in its own process, plain TCP\n\n"
    )
    out.flush()
    figures: dict[str, Any] = {"settings": asdict(settings), "json_backend": _json.BACKEND}
    figures["a"] = part_a(settings, out)
    out.flush()
    figures["b"] = part_b(settings, out)
    out.flush()
    figures["c"] = part_c(settings, out)
    figures["targets"] = targets(figures)
    out.write("targets\n")
    for target in figures["targets"]:
        verdict = "met   " if target["holds"] else "MISSED"
        out.write(f"  [{verdict}] {target['what']}: {target['result']}\n")
    return figures


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args(argv)
    figures = run(QUICK if args.quick else Settings())
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
