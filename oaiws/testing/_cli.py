"""The ``oaiws emulator`` subcommand (also ``python -m oaiws.testing``).

Prints the base URL as the first stdout line, then the WebSocket URL, then (with --tls) the
CA certificate path, and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, Optional

from oaiws.errors import ConfigurationError

from ._emulator import Emulator
from ._options import API_KEY_ENV, DEFAULT_API_KEY, add_arguments, options_from_namespace

logger = logging.getLogger("oaiws.testing")


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "emulator",
        help="run the protocol emulator",
        description="Serve the Responses API WebSocket protocol on a loopback port, for tests,"
        " demos and benchmarks.",
    )
    configure(parser)


def configure(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser)
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="also exit when stdin closes (used by EmulatorProcess)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or DEFAULT_API_KEY
    try:
        emulator = Emulator.from_options(options_from_namespace(args, api_key))
        emulator.start()
    except (ConfigurationError, RuntimeError) as exc:
        print(f"oaiws emulator: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        lines = [emulator.base_url, emulator.websocket_url]
        if emulator.ca_path is not None:
            lines.append(emulator.ca_path)
        print("\n".join(lines), flush=True)
        if args.exit_on_stdin_eof:
            threading.Thread(
                target=_wait_for_eof, args=(stop,), name="oaiws-emulator-stdin", daemon=True
            ).start()
        while not stop.wait(0.2):  # a timed wait lets the main thread run signal handlers
            pass
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _wait_for_eof(stop: threading.Event) -> None:
    try:
        while sys.stdin.read(4096):
            pass
    except (OSError, ValueError):
        pass
    stop.set()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oaiws.testing",
        description="Serve the Responses API WebSocket protocol on a loopback port.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG to stderr")
    configure(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    result: int = args.handler(args)
    return result
