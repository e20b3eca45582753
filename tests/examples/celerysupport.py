"""Helpers of the Celery example's tests: the example loaded here, a real worker in a child
process (its own process group, always ended), and what its log says about each task."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import pytest
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
HERE = Path(__file__).resolve().parent

# What the example reads from the environment; the caller's values must not leak in.
_EXAMPLE_VARIABLES = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "OAIWS_CELERY_DIR")

READY_TIMEOUT = 60.0  # a worker imports Celery and forks its pool: slow on a loaded machine
STOP_TIMEOUT = 10.0  # a warm shutdown (about 7 s with the file transport), before SIGKILL

# "[2026-01-01 10:00:00,000: INFO/ForkPoolWorker-1] Task celery_app.ask[<id>] succeeded ..."
_TASK_LINE = re.compile(
    r"/(?P<process>[\w-]+)\] Task (?P<task>[\w.]+)\[(?P<id>[0-9a-f-]+)\] "
    r"(?P<outcome>succeeded|retry|raised)(?P<rest>.*)"
)


def load_example(celery_dir: Path) -> ModuleType:
    """examples/celery_app.py imported here under its own name (so its task names match the
    worker's), with the default file broker and backend under ``celery_dir``; not added to
    ``sys.modules``."""
    with pytest.MonkeyPatch.context() as patch:
        for name in _EXAMPLE_VARIABLES:
            patch.delenv(name, raising=False)
        patch.setenv("OAIWS_CELERY_DIR", str(celery_dir))
        spec = importlib.util.spec_from_file_location("celery_app", EXAMPLES / "celery_app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


class Worker:
    """``celery -A celery_app worker`` (prefork, two children) in its own process group."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def task_lines(self) -> list[dict[str, str]]:
        """Every task outcome the log reports: process, task, id, outcome, rest of the line."""
        return [match.groupdict() for match in _TASK_LINE.finditer(self.log())]

    def wait_for_outcomes(self, ids: Iterable[str], outcome: str) -> list[dict[str, str]]:
        """The log lines reporting ``outcome`` for each of ``ids``, once all are written (a
        child logs a task's outcome just after storing its result)."""
        wanted = set(ids)

        def lines() -> Optional[list[dict[str, str]]]:
            self.check_alive()
            found = [
                line
                for line in self.task_lines()
                if line["id"] in wanted and line["outcome"] == outcome
            ]
            return found if {line["id"] for line in found} == wanted else None

        result: list[dict[str, str]] = wait_for(lines, 30.0, f"'{outcome}' in the worker's log")
        return result

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"the worker exited ({self.process.returncode}):\n{self.log()}")

    def stop(self) -> None:
        """A warm shutdown (SIGTERM to the main process), then SIGKILL to the whole group
        for whatever is left, children included."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):  # SIGKILL below, then
                    self.process.wait(timeout=STOP_TIMEOUT)
        finally:
            with suppress(ProcessLookupError, PermissionError):  # the group is gone already
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT)


@contextmanager
def running_worker(emulator: Any, celery_dir: Path, log_path: Path) -> Iterator[Worker]:
    """A ready worker for the example against ``emulator``, stopped on leaving."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _EXAMPLE_VARIABLES and not k.startswith("OPENAI_")
    }
    path = [str(EXAMPLES), str(HERE)]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env.update(
        OPENAI_BASE_URL=emulator.base_url,
        OPENAI_API_KEY=emulator.api_key,
        OAIWS_CELERY_DIR=str(celery_dir),
        PYTHONPATH=os.pathsep.join(path),
    )
    command = [
        sys.executable, "-m", "celery", "-A", "celery_app", "worker",
        "--pool=prefork", "--concurrency=2", "--loglevel=INFO",
        # Uses the client in the parent before the pool forks (see celeryprefork.py).
        "--include=celeryprefork",
        # One worker alone has no peers: mingle would only wait for their replies, gossip
        # and heartbeats would only write event files nobody reads.
        "--without-mingle", "--without-gossip", "--without-heartbeat",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=celery_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the children can be killed too
        )
    worker = Worker(process, log_path)
    try:

        def ready() -> bool:
            worker.check_alive()
            return " ready." in worker.log()

        wait_for(ready, READY_TIMEOUT, "the worker to be ready")
        yield worker
    finally:
        worker.stop()
