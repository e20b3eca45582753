"""``ClosesOnExit``: ``with thing:`` calls ``thing.close()`` at the end of the block.

One base for everything oaiws hands out that holds something to give back (a client's pool, a
conversation's hold, a stream's connection, a batch's workers), so they all behave alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, TypeVar

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["ClosesOnExit"]

_Self = TypeVar("_Self", bound="ClosesOnExit")


class ClosesOnExit:
    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()
