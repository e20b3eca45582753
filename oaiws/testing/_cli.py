"""The ``oaiws emulator`` subcommand."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("emulator", help="run the protocol emulator")
    parser.set_defaults(handler=lambda args: 0)
