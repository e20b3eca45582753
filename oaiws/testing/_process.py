"""``EmulatorProcess``: the emulator in a child process, driven through its admin API.

Benchmarks use it so client and server never share one GIL. The child is
``python -m oaiws.testing --port 0 ...``; it prints its base URL first, which is how the
parent learns the port. The child also exits when its stdin closes, so it cannot outlive a
parent that crashed or was killed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Optional, Union
from urllib.parse import urlsplit

from oaiws.errors import ConfigurationError

from ._base import EmulatorBase
from ._faults import Fault
from ._options import API_KEY_ENV, DEFAULT_API_KEY, EmulatorOptions, check_websocket_status

logger = logging.getLogger("oaiws.testing")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
ADMIN_TIMEOUT = 10.0


class EmulatorProcess(EmulatorBase):
    """The same attributes and methods as :class:`Emulator`, served by a child process."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        tls: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connection_age: float = 3600.0,
        idle_timeout: Optional[float] = None,
        ping_interval: Optional[float] = None,
        ping_timeout: float = 10.0,
        deltas: int = 8,
        delta_delay: float = 0.0,
        first_event_delay: float = 0.0,
        hydration_delay: float = 0.0,
        input_cost_per_kb: float = 0.0,
        handshake_delay: float = 0.0,
        certfile: Optional[str] = None,
        keyfile: Optional[str] = None,
        session_tickets: int = 2,
        websocket_status: Optional[int] = None,
        max_requests_per_minute: Optional[float] = None,
        max_tokens_per_minute: Optional[float] = None,
        rate_limit_burst: float = 1.0,
        lanes: str = "on",
    ) -> None:
        self._options = EmulatorOptions(
            api_key=api_key,
            tls=tls,
            host=host,
            port=port,
            max_connection_age=max_connection_age,
            idle_timeout=idle_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            deltas=deltas,
            delta_delay=delta_delay,
            first_event_delay=first_event_delay,
            hydration_delay=hydration_delay,
            input_cost_per_kb=input_cost_per_kb,
            handshake_delay=handshake_delay,
            certfile=certfile,
            keyfile=keyfile,
            session_tickets=session_tickets,
            websocket_status=websocket_status,
            max_requests_per_minute=max_requests_per_minute,
            max_tokens_per_minute=max_tokens_per_minute,
            rate_limit_burst=rate_limit_burst,
            lanes=lanes,
        )
        self._process: Optional[subprocess.Popen[str]] = None
        # The switch's value, passed to each child that start() runs.
        self._websocket_status = websocket_status
        self._port = port
        self._ca_path: Optional[str] = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<EmulatorProcess {self.base_url} {state}>"

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> EmulatorProcess:
        with self._lock:
            if self._process is not None:
                return self
            command = [
                sys.executable,
                "-m",
                "oaiws.testing",
                "--exit-on-stdin-eof",
                *dataclasses.replace(
                    self._options, websocket_status=self._websocket_status
                ).to_cli_args(),
            ]
            env = dict(os.environ)
            env[API_KEY_ENV] = self._options.api_key  # not on the command line, where ps shows it
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                text=True,
            )
            try:
                lines = _read_lines(process, 3 if self._options.tls else 2, START_TIMEOUT)
            except BaseException:
                _terminate(process)
                raise
            self._process = process
            self._port = urlsplit(lines[0]).port or self._port
            if self._options.tls:
                self._ca_path = lines[2]
            logger.info("emulator process %s listening on %s", process.pid, self.base_url)
            return self

    def stop(self) -> None:
        with self._lock:
            process, self._process = self._process, None
            if process is not None:
                _terminate(process)
            self._ca_path = None

    def __del__(self) -> None:
        # Last resort for a forgotten process; stdin EOF covers a parent that dies outright.
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            process.kill()

    # -- control (admin API) -------------------------------------------------------------------

    def stats(self) -> dict[str, Union[int, float]]:
        result: dict[str, Union[int, float]] = self._admin("GET", "stats")
        return result

    def reset_stats(self) -> None:
        self._admin("POST", "stats/reset")

    def inject(self, fault: Fault, *, on: str = "request", times: int = 1) -> None:
        if not isinstance(fault, Fault):
            raise ConfigurationError(f"inject() takes a Fault, not {type(fault).__name__}")
        self._admin("POST", "faults", {"on": on, "times": times, "fault": fault.to_dict()})

    def clear_faults(self) -> None:
        self._admin("DELETE", "faults")

    def close_all_connections(self, code: Optional[int] = 1001) -> None:
        self._admin("POST", "close_all", {"code": code})

    @property
    def websocket_status(self) -> Optional[int]:
        """None while WebSocket mode is on, else the status every upgrade is answered with."""
        return self._websocket_status

    def set_websocket_status(self, status: Optional[int]) -> None:
        """As :meth:`Emulator.set_websocket_status`, through the admin API while the child runs
        (and kept for the next start())."""
        check_websocket_status(status)
        if self.running:
            self._admin("POST", "websocket", {"status": status})
        self._websocket_status = status

    def _admin(self, method: str, path: str, body: Optional[dict[str, Any]] = None) -> Any:
        if not self.running:
            raise RuntimeError("the emulator process is not running: call start() first")
        origin = self.base_url[: -len("/v1")]
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - a loopback URL we built
            f"{origin}/_emulator/{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
        )
        context = ssl.create_default_context(cafile=self._ca_path) if self._ca_path else None
        try:
            with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT, context=context) as reply:  # noqa: S310
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise ConfigurationError(
                f"the emulator refused {method} {path}: {exc.code} {detail}"
            ) from None


def _read_lines(process: subprocess.Popen[str], count: int, timeout: float) -> list[str]:
    """The child's first stdout lines, within ``timeout`` (a reader thread keeps it bounded)."""
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for _ in range(count):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        done.set()

    reader = threading.Thread(target=read, name="oaiws-emulator-process-start", daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not done.wait(0.05):
        if process.poll() is not None or time.monotonic() > deadline:
            break
    reader.join(0.5)
    if len(lines) < count:
        code = process.poll()
        reason = f"exited with {code}" if code is not None else f"printed no URL within {timeout} s"
        raise RuntimeError(f"the emulator process {reason} (see its stderr above)")
    return lines


def _terminate(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()  # SIGTERM: the child closes its sockets and exits 0
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()
