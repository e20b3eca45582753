"""Server-side state: the store of ``store: true`` responses and each connection's cache."""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from ._model import Item, context_size

# Stored responses expire oldest first beyond this many, so a long benchmark cannot grow the
# emulator without bound (the real service expires stored responses too).
STORE_CAPACITY = 100_000


@dataclass(frozen=True)
class Chain:
    """What a continuation needs from an earlier response: the whole conversation up to and
    including that response's output, normalized for the model."""

    response_id: str
    context: tuple[Item, ...]

    @property
    def size(self) -> int:
        return context_size(self.context)


@dataclass
class _Stored:
    response: dict[str, Any]
    chain: Optional[Chain]  # None: retrievable, but nothing continues from it
    input_items: list[dict[str, Any]]


class ResponseStore:
    """Responses created with ``store: true``, shared by every connection and by HTTP."""

    def __init__(self, capacity: int = STORE_CAPACITY) -> None:
        self._lock = threading.Lock()
        self._capacity = capacity
        self._entries: OrderedDict[str, _Stored] = OrderedDict()

    def put(
        self,
        response: dict[str, Any],
        chain: Optional[Chain],
        input_items: Sequence[dict[str, Any]],
    ) -> None:
        with self._lock:
            self._entries[response["id"]] = _Stored(
                copy.deepcopy(response), chain, list(input_items)
            )
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def chain(self, response_id: str) -> Optional[Chain]:
        with self._lock:
            entry = self._entries.get(response_id)
            return entry.chain if entry else None

    def response(self, response_id: str) -> Optional[dict[str, Any]]:
        with self._lock:
            entry = self._entries.get(response_id)
            return copy.deepcopy(entry.response) if entry else None

    def input_items(self, response_id: str) -> Optional[list[dict[str, Any]]]:
        with self._lock:
            entry = self._entries.get(response_id)
            return copy.deepcopy(entry.input_items) if entry else None

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._entries.pop(response_id, None) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class ConnectionCache:
    """The most recent response of each lane of one connection; dies with the connection.

    A continuation may name the latest response of any lane of its connection: the cache is
    per connection, the "most recent" rule per lane.
    """

    def __init__(self) -> None:
        self._by_lane: dict[Optional[str], Chain] = {}

    def lookup(self, response_id: str) -> Optional[Chain]:
        for chain in self._by_lane.values():
            if chain.response_id == response_id:
                return chain
        return None

    def remember(self, lane: Optional[str], chain: Chain) -> None:
        self._by_lane[lane] = chain

    def evict(self, response_id: str, lane: Optional[str]) -> None:
        """A continuation on ``lane`` failed: drop its parent if it is that lane's latest.

        A failed fork from another lane leaves the parent cached for the lane that produced
        it, so a fork can never cost its source lane the fast path.
        """
        chain = self._by_lane.get(lane)
        if chain is not None and chain.response_id == response_id:
            del self._by_lane[lane]

    def clear(self) -> None:
        self._by_lane.clear()
