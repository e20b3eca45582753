"""A generator of 100,000 requests through ``client.batch``: read lazily, memory flat."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import oaiws
from oaiws.testing import EmulatorProcess

TOTAL = 100_000
CONCURRENCY = 8


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_generator_of_100000_requests_runs_in_flat_memory() -> None:
    produced = [0]
    consumed = [0]
    lead = [0]

    def requests() -> Iterator[dict[str, Any]]:
        for number in range(TOTAL):
            produced[0] += 1
            lead[0] = max(lead[0], produced[0] - consumed[0])
            yield {"model": "gpt-test", "input": f"q{number}", "store": False}

    memory: dict[int, int] = {}
    succeeded = 0
    # Its own process: the emulator's work never shows in this process's memory.
    with (
        EmulatorProcess(deltas=1) as emulator,
        oaiws.Client(
            api_key=emulator.api_key, base_url=emulator.base_url, max_connections=CONCURRENCY
        ) as client,
    ):
        for result in client.batch(requests(), concurrency=CONCURRENCY):
            consumed[0] += 1
            succeeded += result.ok
            if consumed[0] % 20_000 == 0:
                memory[consumed[0]] = resident_bytes()
    assert succeeded == TOTAL
    assert lead[0] <= 4 * CONCURRENCY + 1  # never read further ahead than the window
    growth = memory[TOTAL] - memory[20_000]
    assert growth < 8 * 1024 * 1024, f"grew {growth / 1e6:.1f} MB over 80,000 requests"
