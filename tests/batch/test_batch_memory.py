"""A generator of 100,000 requests through ``client.batch``: read lazily, memory flat.

The run is measured in a fresh interpreter, so the resident memory it reports is the batch's
alone, not what earlier tests of this process left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from oaiws.testing import EmulatorProcess

TOTAL = 100_000
CONCURRENCY = 8

RUN = r"""
import json, os, sys
import oaiws

total, concurrency = int(sys.argv[1]), int(sys.argv[2])
produced = consumed = lead = 0

def resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def requests():
    global produced, lead
    for number in range(total):
        produced += 1
        lead = max(lead, produced - consumed)
        yield {"model": "gpt-test", "input": f"q{number}", "store": False}

memory, succeeded = {}, 0
with oaiws.Client(max_connections=concurrency) as client:
    for result in client.batch(requests(), concurrency=concurrency):
        consumed += 1
        succeeded += result.ok
        if consumed % 20_000 == 0:
            memory[consumed] = resident_bytes()
print(json.dumps({"succeeded": succeeded, "lead": lead, "memory": memory}))
"""


def test_a_generator_of_100000_requests_runs_in_flat_memory() -> None:
    # The emulator in a process of its own too: its work never shows in the batch's memory.
    with EmulatorProcess(deltas=1) as emulator:
        env = {"OPENAI_API_KEY": emulator.api_key, "OPENAI_BASE_URL": emulator.base_url}
        done = subprocess.run(
            [sys.executable, "-c", RUN, str(TOTAL), str(CONCURRENCY)],
            env={**_plain_environment(), **env},
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["succeeded"] == TOTAL
    assert report["lead"] <= 4 * CONCURRENCY + 1  # never read further ahead than the window
    memory = {int(k): v for k, v in report["memory"].items()}
    growth = memory[TOTAL] - memory[20_000]
    assert growth < 8 * 1024 * 1024, f"grew {growth / 1e6:.1f} MB over 80,000 requests"


def _plain_environment() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OPENAI_") and "proxy" not in k.lower()
    }
