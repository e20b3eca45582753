"""An emulator of the Responses API WebSocket protocol, for tests, demos and benchmarks.

::

    from oaiws.testing import Emulator, Fault

    with Emulator() as emu:
        ...  # point a client at emu.base_url / emu.websocket_url with key emu.api_key
        emu.inject(Fault(error_code="rate_limit_exceeded"))

The server library (aiohttp) is imported only when an emulator starts, so importing this
package (and the pytest plugin) works without the ``emulator`` extra. See docs/emulator.md.
"""

from __future__ import annotations

from ._emulator import Emulator
from ._faults import Fault
from ._hostile import HOSTILE_FRAMES
from ._model import expected_text
from ._options import EmulatorOptions
from ._process import EmulatorProcess

__all__ = [
    "HOSTILE_FRAMES",
    "Emulator",
    "EmulatorOptions",
    "EmulatorProcess",
    "Fault",
    "expected_text",
]
