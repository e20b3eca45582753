"""The ``oaiws demo`` subcommand: the client against the embedded emulator, no key needed.

Several threads share one small pool while the main thread prints one response token by
token; the pool's statistics at the end show how few handshakes served all the requests.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, TextIO

from ._client import Client
from .testing import Emulator

__all__ = ["register", "run"]

_MISSING_EXTRA = (
    "oaiws demo runs on the embedded emulator, which needs the emulator extra:\n"
    '    pip install "oaiws[emulator]"'
)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="run the client against the embedded emulator (no API key, no network)",
        description=__doc__,
    )
    parser.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")
    parser.add_argument(
        "--requests", type=int, default=5, help="requests per worker thread (default 5)"
    )
    parser.add_argument(
        "--max-connections", type=int, default=2, help="size of the shared pool (default 2)"
    )
    parser.add_argument(
        "--delta-delay",
        type=float,
        default=0.03,
        help="seconds between two tokens of the printed stream (default 0.03)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    out = out if out is not None else sys.stdout
    if importlib.util.find_spec("aiohttp") is None:
        print(_MISSING_EXTRA, file=sys.stderr)
        return 2
    for name in ("threads", "requests", "max_connections"):
        if getattr(args, name) < 1:
            print(f"--{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if args.delta_delay < 0:
        print("--delta-delay must not be negative", file=sys.stderr)
        return 2

    emulator = Emulator(deltas=12)
    with emulator:
        client = Client(
            api_key=emulator.api_key,
            base_url=emulator.base_url,
            max_connections=args.max_connections,
        )
        with client:
            _show(args, emulator, client, out)
    return 0


def _show(args: argparse.Namespace, emulator: Emulator, client: Client, out: TextIO) -> None:
    print(
        f"emulator on {emulator.websocket_url}; {args.threads} threads x {args.requests} "
        f"requests share a pool of {args.max_connections} connections",
        file=out,
    )
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.threads) as workers:
        futures = [
            workers.submit(_worker, client, number, args.requests) for number in range(args.threads)
        ]
        print("\nstreamed by the main thread, token by token:\n  ", end="", file=out, flush=True)
        delay_ms = str(int(args.delta_delay * 1000))
        with client.generate_response(
            model="demo-model",
            input="Tell me about connection pools.",
            metadata={"emulator_delta_delay_ms": delay_ms},
        ) as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    print(event.delta, end="", file=out, flush=True)
        print(file=out)
        completed = sum(future.result() for future in futures)
    elapsed = time.monotonic() - started

    total = args.threads * args.requests
    print(f"\n{completed} of {total} worker responses completed in {elapsed:.2f}s", file=out)
    stats = client.pool_stats()
    print("\npool statistics:", file=out)
    width = max(len(key) for key in stats)
    for key, value in stats.items():
        print(f"  {key:<{width}}  {value}", file=out)
    print(
        f"\n{stats['checkouts']} requests over {stats['connections_opened']} handshakes: "
        "the threads took turns on warm connections",
        file=out,
    )


def _worker(client: Client, number: int, requests: int) -> int:
    finished = 0
    for turn in range(requests):
        response = client.create_response(
            model="demo-model", input=f"Worker {number}, request {turn}: say something short."
        )
        if response.status == "completed":
            finished += 1
    return finished
