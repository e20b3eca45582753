"""Fixtures of the batch tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from batchsupport import cli_env

from oaiws import _retry


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # The policy's pauses, not its decisions, are shortened: every rule still runs.
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 0.01)
    monkeypatch.setattr(_retry, "MAX_BACKOFF", 0.05)


@pytest.fixture
def popen_cli(tmp_path: Path) -> Iterator[Any]:
    """``popen_cli(emulator, *args)``: the command started in the background; killed at
    teardown if still running."""
    children: list[subprocess.Popen[str]] = []

    def start(emulator: Any, *args: str) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-m", "oaiws.cli", "batch", *args],
            env=cli_env(emulator),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=10)
