"""pytest fixtures that give a running emulator (registered through the ``pytest11`` entry
point, so they are available wherever oaiws is installed).

``oaiws_emulator``: a started :class:`~oaiws.testing.Emulator` (plain TCP, default options).
``oaiws_emulator_factory``: ``factory(**options)`` starts one with options; every emulator it
started is stopped at teardown.

Nothing here imports aiohttp until a fixture is used, so installing oaiws without the
``emulator`` extra never breaks pytest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import pytest

from ._emulator import Emulator


@pytest.fixture
def oaiws_emulator_factory() -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def factory(**options: Any) -> Emulator:
        emulator = Emulator(**options)
        started.append(emulator)
        return emulator.start()

    yield factory
    for emulator in reversed(started):
        emulator.stop()


@pytest.fixture
def oaiws_emulator(oaiws_emulator_factory: Callable[..., Emulator]) -> Emulator:
    return oaiws_emulator_factory()
