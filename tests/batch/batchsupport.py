"""Helpers of the batch tests: Batch API files, and the oaiws command in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def batch_line(custom_id: str, **body: Any) -> dict[str, Any]:
    body.setdefault("model", "gpt-test")
    body.setdefault("input", f"question {custom_id}")
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}


def write_jsonl(path: Path, items: Iterable[Any]) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for item in items:
            out.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def cli_env(emulator: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_API_KEY=emulator.api_key, OPENAI_BASE_URL=emulator.base_url)
    return env


def run_cli(emulator: Any, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``oaiws batch ARGS`` in a child process against ``emulator``, bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "oaiws.cli", "batch", *args],
        env=cli_env(emulator),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
