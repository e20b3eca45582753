"""Helpers of the web example tests: a real gunicorn serving examples/flask_app.py or
examples/django_app in its own process group (always ended), and polls with a deadline.
Imported once gunicorn is known to be installed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from gunicorn.config import KNOWN_SETTINGS
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

# app name -> (directory gunicorn runs in, WSGI application)
APPS = {
    "flask": (EXAMPLES, "flask_app:app"),
    "django": (EXAMPLES / "django_app", "wsgi:application"),
}
WORKERS = 2
READY_TIMEOUT = 60.0  # two workers importing Django on a loaded machine
STOP_TIMEOUT = 10.0  # a graceful stop (idle workers), before SIGKILL
REQUEST_TIMEOUT = 30.0  # any one HTTP request of a test

# What the examples read from the environment: the caller's values must not leak in.
_APP_VARIABLES = (
    "OAIWS_MODEL",
    "OAIWS_STORE",
    "OAIWS_CHAT_DB",
    "OAIWS_SESSION_DIR",
    "FLASK_SECRET_KEY",
    "DJANGO_SECRET_KEY",
    "DJANGO_SETTINGS_MODULE",
    "DJANGO_ALLOWED_HOSTS",
)


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def browser() -> requests.Session:
    """A browser: a session keeps its cookies; proxies from the environment are ignored (the
    app is on loopback)."""
    session = requests.Session()
    session.trust_env = False
    return session


def _supports(option: str) -> bool:
    """Whether this gunicorn has a setting (newer ones add a control socket, for one)."""
    return any(setting.name == option for setting in KNOWN_SETTINGS)


@dataclass
class Gunicorn:
    """``gunicorn -k gthread`` with two workers serving one of ``APPS``."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    pids: frozenset[str] = frozenset()

    @classmethod
    def start(cls, app: str, env: Mapping[str, str], log_path: Path) -> Gunicorn:
        directory, target = APPS[app]
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "gthread",
            "--workers",
            str(WORKERS),
            "--threads",
            "4",
            "--preload",
            # Each worker gets its own listening socket and the kernel spreads new
            # connections between them, so turns of one chat land on different workers.
            "--reuse-port",
            "--bind",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            "3",
            "--chdir",
            str(directory),
        ]
        if _supports("control_socket_disable"):
            command.append("--no-control-socket")  # one per user by default: tests run several
        command.append(target)
        environment = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("OPENAI_")
            and "proxy" not in name.lower()
            and name not in _APP_VARIABLES
        }
        environment.update(env)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the workers die with it
            )
        server = cls(process, f"http://127.0.0.1:{port}", log_path)
        try:
            server.pids = server._wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def _wait_ready(self) -> frozenset[str]:
        """Poll GET /stats until both workers answered (each binds its own socket)."""
        seen: set[str] = set()

        def both_workers() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            with suppress(requests.ConnectionError), browser() as session:
                answer = session.get(
                    f"{self.url}/stats", headers={"Connection": "close"}, timeout=5
                )
                if answer.status_code == 200:
                    seen.add(answer.headers["X-Worker-Pid"])
            return len(seen) == WORKERS

        try:
            wait_for(both_workers, READY_TIMEOUT, f"both workers of {self.url}")
        except AssertionError as failure:  # what wait_for raises: with the server's log
            raise AssertionError(f"{failure}\n{self.log()}") from None
        return frozenset(seen)

    def stop(self) -> None:
        """SIGTERM to the process group, then SIGKILL after a bound; never raises."""
        for sig, timeout in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                continue
            # The master is gone; a worker it failed to reap would still be in the group.
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            return


def read_stream(answer: requests.Response, started: float) -> tuple[list[bytes], float]:
    """The chunks of a streamed answer as they arrive, and when the first one came (seconds
    after ``started``)."""
    chunks: list[bytes] = []
    first = float("nan")
    for chunk in answer.iter_content(chunk_size=None):
        if not chunks:
            first = time.monotonic() - started
        chunks.append(chunk)
    return chunks, first
