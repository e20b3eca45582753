"""The ``oaiws`` command: each subcommand lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from . import _batchcli, _demo
from ._version import __version__
from .testing import _cli as emulator_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oaiws",
        description="The OpenAI Responses API over WebSocket, from synchronous Python.",
    )
    parser.add_argument("--version", action="version", version=f"oaiws {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log oaiws at DEBUG to stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    emulator_cli.register(commands)
    _demo.register(commands)
    _batchcli.register(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        result: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
