"""``oaiws demo`` runs the client on the embedded emulator, with no key and no network."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_demo_runs_and_prints_the_pool_stats() -> None:
    result = _run("-m", "oaiws.cli", "demo", "--delta-delay", "0", "--threads", "3")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "token by token" in out
    assert "15 of 15 worker responses completed" in out
    assert "pool statistics:" in out
    match = re.search(r"(\d+) requests over (\d+) handshakes", out)
    assert match is not None, out
    requests, handshakes = int(match.group(1)), int(match.group(2))
    assert requests == 16
    assert 1 <= handshakes <= 2  # the default pool holds two connections


def test_demo_without_the_emulator_extra_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['aiohttp'] = None\n"
        "from oaiws.cli import main\n"
        "sys.exit(main(['demo']))\n"
    )
    result = _run("-c", code)
    assert result.returncode == 2
    assert 'pip install "oaiws[emulator]"' in result.stderr
    assert result.stdout == ""
