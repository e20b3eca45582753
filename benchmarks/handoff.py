"""Where scenario (b)'s gap comes from: threads handing connections to each other.

Runs the same 640 mixed requests (one in four long) four ways against one TLS emulator in its
own process, interleaved, and prints requests per second:

- ``raw8``: 8 threads, each with its own kept websocket-client connection (the (b) floor);
- ``oaiws8``: 8 threads sharing ``Client(max_connections=8)``: no thread ever waits;
- ``oaiws32``: 32 threads sharing the same pool: every request is a hand-off between threads;
- ``raw32``: 32 threads, each with its own kept connection.

``python -m benchmarks.handoff [--switch-interval SECONDS] [--rounds N]``
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from typing import Callable, Optional

import websocket

import oaiws
from oaiws import _json
from oaiws.testing import EmulatorProcess

REQUESTS = 640


def _deltas(index: int) -> str:
    return "200" if index % 4 == 3 else "20"


def _timed(threads: int, work: Callable[[itertools.count[int]], None]) -> float:
    counter = itertools.count()
    workers = [threading.Thread(target=work, args=(counter,)) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return REQUESTS / (time.perf_counter() - started)


def run_oaiws(emu: EmulatorProcess, threads: int) -> float:
    with oaiws.Client(
        api_key=emu.api_key, base_url=emu.base_url, verify=emu.ca_path or True, max_connections=8
    ) as client:

        def work(counter: itertools.count[int]) -> None:
            for index in counter:
                if index >= REQUESTS:
                    return
                client.create_response(
                    model="m", input=f"b{index}", metadata={"emulator_deltas": _deltas(index)}
                )

        return _timed(threads, work)


def run_raw(emu: EmulatorProcess, threads: int) -> float:
    def work(counter: itertools.count[int]) -> None:
        ws = websocket.create_connection(
            emu.websocket_url,
            header=[f"Authorization: Bearer {emu.api_key}"],
            sslopt={"ca_certs": emu.ca_path},
            skip_utf8_validation=True,
        )
        try:
            for index in counter:
                if index >= REQUESTS:
                    return
                create = {
                    "type": "response.create",
                    "model": "m",
                    "input": f"b{index}",
                    "metadata": {"emulator_deltas": _deltas(index)},
                }
                ws.send(_json.dumps(create))
                while _json.loads(ws.recv())["type"] != "response.completed":
                    pass
        finally:
            ws.close()

    return _timed(threads, work)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.handoff", description=__doc__)
    parser.add_argument("--switch-interval", type=float, help="sys.setswitchinterval()")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    print(f"switch interval {sys.getswitchinterval() * 1000:g} ms; {REQUESTS} requests a run")
    print("round   raw8  oaiws8  oaiws32  raw32   (requests per second)")
    with EmulatorProcess(tls=True) as emu:
        for number in range(1, args.rounds + 1):
            figures = (
                run_raw(emu, 8),
                run_oaiws(emu, 8),
                run_oaiws(emu, 32),
                run_raw(emu, 32),
            )
            print(f"{number:>5} " + " ".join(f"{value:>7.0f}" for value in figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
