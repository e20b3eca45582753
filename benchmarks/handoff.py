"""Where scenario (b)'s gap comes from: threads handing connections to each other.

Runs the same 640 mixed requests (one in four long) five ways against one TLS emulator in its
own process, interleaved, and prints requests per second and, on Linux, the voluntary context
switches of the worker threads per request:

- ``raw8``: 8 threads, each with its own kept websocket-client connection (the (b) floor);
- ``oaiws8``: 8 threads sharing ``Client(max_connections=8)``: no thread ever waits;
- ``oaiws32``: 32 threads sharing the same pool: every request is a hand-off between threads;
- ``fifo32``: 32 threads sharing 8 raw connections through the smallest fair pool there is (a
  lock, a list and a first-come-first-served line of waiting threads): what any fair hand-off
  costs, without oaiws;
- ``raw32``: 32 threads, each with its own kept connection.

The switch count tells the GIL's two regimes apart. While a thread reading a socket gets the
GIL back as soon as its data is there, a request costs a handful of switches; once threads
queue for the GIL, every read that releases it (websocket-client makes three per frame) can
hand it to another thread, and a request costs dozens. With 32 threads on 2 cores the process
falls into the second regime most of the time, whoever manages the connections.

``python -m benchmarks.handoff [--switch-interval SECONDS] [--rounds N]``
"""

from __future__ import annotations

import argparse
import collections
import itertools
import sys
import threading
import time
from typing import Any, Callable, Optional

import websocket

import oaiws
from oaiws import _json
from oaiws.testing import EmulatorProcess

REQUESTS = 640
POOL_SIZE = 8
RUNS = ("raw8", "oaiws8", "oaiws32", "fifo32", "raw32")

try:
    import resource

    _RUSAGE_THREAD: Optional[int] = getattr(resource, "RUSAGE_THREAD", None)
except ImportError:  # not POSIX
    _RUSAGE_THREAD = None


def _deltas(index: int) -> str:
    return "200" if index % 4 == 3 else "20"


def _switches() -> int:
    """Voluntary context switches of the calling thread so far (0 where unknown)."""
    if _RUSAGE_THREAD is None:
        return 0
    return int(resource.getrusage(_RUSAGE_THREAD).ru_nvcsw)


def _timed(threads: int, work: Callable[[itertools.count[int]], None]) -> tuple[float, float]:
    """Requests per second, and voluntary context switches per request, of ``threads``
    threads running ``work`` over one shared counter of requests."""
    counter = itertools.count()
    switches: list[int] = []

    def run() -> None:
        before = _switches()
        try:
            work(counter)
        finally:
            switches.append(_switches() - before)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return REQUESTS / (time.perf_counter() - started), sum(switches) / REQUESTS


def _create(index: int) -> str:
    return _json.dumps(
        {
            "type": "response.create",
            "model": "m",
            "input": f"b{index}",
            "metadata": {"emulator_deltas": _deltas(index)},
        }
    )


def _connect(emu: EmulatorProcess) -> websocket.WebSocket:
    return websocket.create_connection(
        emu.websocket_url,
        header=[f"Authorization: Bearer {emu.api_key}"],
        sslopt={"ca_certs": emu.ca_path},
        skip_utf8_validation=True,
    )


def _exchange(ws: websocket.WebSocket, index: int) -> None:
    ws.send(_create(index))
    while _json.loads(ws.recv())["type"] != "response.completed":
        pass


def run_oaiws(emu: EmulatorProcess, threads: int) -> tuple[float, float]:
    with oaiws.Client(
        api_key=emu.api_key,
        base_url=emu.base_url,
        verify=emu.ca_path or True,
        max_connections=POOL_SIZE,
    ) as client:

        def work(counter: itertools.count[int]) -> None:
            for index in counter:
                if index >= REQUESTS:
                    return
                client.create_response(
                    model="m", input=f"b{index}", metadata={"emulator_deltas": _deltas(index)}
                )

        return _timed(threads, work)


def run_raw(emu: EmulatorProcess, threads: int) -> tuple[float, float]:
    def work(counter: itertools.count[int]) -> None:
        ws = _connect(emu)
        try:
            for index in counter:
                if index >= REQUESTS:
                    return
                _exchange(ws, index)
        finally:
            ws.close()

    return _timed(threads, work)


class _FifoPool:
    """The smallest fair pool: a freed connection goes straight to the longest waiter."""

    def __init__(self, connections: list[websocket.WebSocket]) -> None:
        self._lock = threading.Lock()
        self._idle = list(connections)
        self._line: collections.deque[list[Any]] = collections.deque()

    def acquire(self) -> websocket.WebSocket:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            place: list[Any] = [threading.Event(), None]
            self._line.append(place)
        place[0].wait()
        ws: websocket.WebSocket = place[1]
        return ws

    def release(self, ws: websocket.WebSocket) -> None:
        with self._lock:
            if not self._line:
                self._idle.append(ws)
                return
            place = self._line.popleft()
        place[1] = ws
        place[0].set()


def run_fifo(emu: EmulatorProcess, threads: int) -> tuple[float, float]:
    connections = [_connect(emu) for _ in range(POOL_SIZE)]
    pool = _FifoPool(connections)

    def work(counter: itertools.count[int]) -> None:
        for index in counter:
            if index >= REQUESTS:
                return
            ws = pool.acquire()
            _exchange(ws, index)
            pool.release(ws)

    try:
        return _timed(threads, work)
    finally:
        for ws in connections:
            ws.close()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.handoff", description=__doc__)
    parser.add_argument("--switch-interval", type=float, help="sys.setswitchinterval()")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    print(f"switch interval {sys.getswitchinterval() * 1000:g} ms; {REQUESTS} requests a run")
    print("requests per second (voluntary context switches per request)")
    print("round" + "".join(f"{name:>16}" for name in RUNS))
    with EmulatorProcess(tls=True) as emu:
        for number in range(1, args.rounds + 1):
            figures = (
                run_raw(emu, POOL_SIZE),
                run_oaiws(emu, POOL_SIZE),
                run_oaiws(emu, 32),
                run_fifo(emu, 32),
                run_raw(emu, 32),
            )
            cells = "".join(f"{f'{rate:.0f} ({switches:.0f})':>16}" for rate, switches in figures)
            print(f"{number:>5}{cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
