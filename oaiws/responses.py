"""``client.responses``: the Responses API in openai-python's shape, synchronous.

``create`` goes through the client's transport (WebSocket, or HTTP when that is chosen or
WebSocket mode is unavailable), except ``background=True``, which only HTTP offers. The REST
calls (``retrieve``, ``delete``, ``cancel``, ``input_items.list``) are HTTP. Every call checks
its arguments before anything is sent, follows the client's retry policy (429, 5xx and
network failures before any output; never a caller error) and raises the same documented
exceptions as the rest of the client (a missing response is ``NotFoundError``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, TypeVar, Union, overload
from urllib.parse import quote

from . import _retry
from ._events import Fields, Response
from ._retry import AttemptFailed, KeepAliveDropped
from ._stream import ResponseStream, collect_response
from ._transport import HttpSource
from .errors import APIError, ConfigurationError, ProtocolError

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["InputItems", "Responses"]

T = TypeVar("T")

# What a response id may hold: it goes into a URL path (so no "/", and no "." or ".." that a
# URL library would resolve against the path).
_RESPONSE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,255}")
_ORDERS = ("asc", "desc")


class Responses:
    """``client.responses``: ``create``, ``retrieve``, ``delete``, ``cancel`` and
    ``input_items.list``, like openai-python's, over this client's connections."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.input_items = InputItems(runtime)

    @overload
    def create(
        self,
        *,
        stream: Literal[False] = False,
        background: Optional[bool] = None,
        timeout: Optional[float] = None,
        **fields: Any,
    ) -> Response: ...

    @overload
    def create(
        self,
        *,
        stream: Literal[True],
        background: Optional[bool] = None,
        timeout: Optional[float] = None,
        **fields: Any,
    ) -> ResponseStream: ...

    @overload
    def create(
        self,
        *,
        stream: bool,
        background: Optional[bool] = None,
        timeout: Optional[float] = None,
        **fields: Any,
    ) -> Union[Response, ResponseStream]: ...

    def create(
        self,
        *,
        stream: bool = False,
        background: Optional[bool] = None,
        timeout: Optional[float] = None,
        **fields: Any,
    ) -> Union[Response, ResponseStream]:
        """Create a response: the finished ``Response``, or with ``stream=True`` a
        ``ResponseStream`` of its events (the same as ``create_response`` and
        ``generate_response``).

        ``background=True`` runs it in the background on the server (HTTP only; it needs
        ``store`` not false): without ``stream`` the ``Response`` comes back at once, queued,
        to ``retrieve`` or ``cancel`` later; with ``stream=True`` its events stream as it
        runs, and ``retrieve(id, stream=True, starting_after=n)`` picks them up again.
        """
        if not isinstance(stream, bool):
            raise ConfigurationError("stream must be True or False")
        if background is not None and not isinstance(background, bool):
            raise ConfigurationError("background must be True, False or None")
        runtime = self._runtime
        payload, seconds = runtime.prepare(fields, timeout)
        if not background:
            if stream:
                return ResponseStream(runtime, payload, timeout=seconds)
            return collect_response(runtime, payload, timeout=seconds)
        if payload.get("store") is False:
            raise ConfigurationError(
                "background=True needs the response stored: remove store=False"
            )
        payload["background"] = True
        if stream:
            source = HttpSource(runtime.http, "POST", "/responses")
            return ResponseStream(runtime, payload, timeout=seconds, channels=source)
        body = {key: value for key, value in payload.items() if key != "type"}
        data = self._call("POST", "/responses", payload=body, timeout=seconds)
        return _response(data, "POST /responses")

    @overload
    def retrieve(
        self,
        response_id: str,
        *,
        stream: Literal[False] = False,
        starting_after: Optional[int] = None,
        include: Optional[Sequence[str]] = None,
        timeout: Optional[float] = None,
    ) -> Response: ...

    @overload
    def retrieve(
        self,
        response_id: str,
        *,
        stream: Literal[True],
        starting_after: Optional[int] = None,
        include: Optional[Sequence[str]] = None,
        timeout: Optional[float] = None,
    ) -> ResponseStream: ...

    @overload
    def retrieve(
        self,
        response_id: str,
        *,
        stream: bool,
        starting_after: Optional[int] = None,
        include: Optional[Sequence[str]] = None,
        timeout: Optional[float] = None,
    ) -> Union[Response, ResponseStream]: ...

    def retrieve(
        self,
        response_id: str,
        *,
        stream: bool = False,
        starting_after: Optional[int] = None,
        include: Optional[Sequence[str]] = None,
        timeout: Optional[float] = None,
    ) -> Union[Response, ResponseStream]:
        """A stored response by id. ``stream=True`` streams the events of a background
        response from the start, or after sequence number ``starting_after``, following it
        live until it ends."""
        path = _response_path(response_id)
        seconds = self._runtime.check_timeout(timeout)
        self._runtime.check_open()
        params: dict[str, Any] = {}
        if include is not None:
            params["include[]"] = _strings("include", include)
        if starting_after is not None:
            if not stream:
                raise ConfigurationError("starting_after is for stream=True")
            if (
                isinstance(starting_after, bool)
                or not isinstance(starting_after, int)
                or starting_after < 0
            ):
                raise ConfigurationError("starting_after must be a non-negative integer")
            params["starting_after"] = starting_after
        if stream:
            self._runtime.config.require_api_key()
            params["stream"] = "true"
            source = HttpSource(self._runtime.http, "GET", path, params)
            placeholder = {"model": None, "response_id": response_id}
            return ResponseStream(self._runtime, placeholder, timeout=seconds, channels=source)
        data = self._call("GET", path, params=params or None, timeout=seconds)
        return _response(data, f"GET {path}")

    def delete(self, response_id: str, *, timeout: Optional[float] = None) -> None:
        """Delete a stored response (``NotFoundError`` when there is none)."""
        path = _response_path(response_id)
        seconds = self._runtime.check_timeout(timeout)
        self._call("DELETE", path, timeout=seconds)

    def cancel(self, response_id: str, *, timeout: Optional[float] = None) -> Response:
        """Cancel a background response that is queued or running; returns it, cancelled."""
        path = _response_path(response_id) + "/cancel"
        seconds = self._runtime.check_timeout(timeout)
        data = self._call("POST", path, timeout=seconds)
        return _response(data, f"POST {path}")

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Mapping[str, Any]] = None,
        payload: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float],
    ) -> Any:
        return _rest_call(
            self._runtime, method, path, params=params, payload=payload, timeout=timeout
        )


class InputItems:
    """``client.responses.input_items``: the input items of a stored response."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def list(
        self,
        response_id: str,
        *,
        after: Optional[str] = None,
        before: Optional[str] = None,
        limit: Optional[int] = None,
        order: Optional[str] = None,
        include: Optional[Sequence[str]] = None,
        timeout: Optional[float] = None,
    ) -> Iterator[Fields]:
        """Every input item, page after page (``limit`` items a page), as they are read.

        The arguments are checked now; the pages are fetched as the iterator is consumed,
        each under the retry policy and ``timeout`` (per page).
        """
        path = _response_path(response_id) + "/input_items"
        seconds = self._runtime.check_timeout(timeout)
        self._runtime.check_open()
        params: dict[str, Any] = {}
        for name, value in (("after", after), ("before", before)):
            if value is not None:
                if not isinstance(value, str) or not value:
                    raise ConfigurationError(f"{name} must be an item id (a non-empty string)")
                params[name] = value
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
                raise ConfigurationError("limit must be an integer from 1 to 100")
            params["limit"] = limit
        if order is not None:
            if order not in _ORDERS:
                raise ConfigurationError("order must be 'asc' or 'desc'")
            params["order"] = order
        if include is not None:
            params["include[]"] = _strings("include", include)
        return self._pages(path, params, seconds)

    def _pages(
        self, path: str, params: dict[str, Any], timeout: Optional[float]
    ) -> Iterator[Fields]:
        while True:
            page = _rest_call(self._runtime, "GET", path, params=params, timeout=timeout)
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list):
                raise ProtocolError(f"the answer to GET {path} has no list of items")
            items = [item for item in data if isinstance(item, dict)]
            for item in items:
                yield Fields(item, "input item")
            last = page.get("last_id")
            if not isinstance(last, str):
                last = items[-1].get("id") if items else None
            if page.get("has_more") is not True or not isinstance(last, str) or not items:
                return
            if last == params.get("after"):
                raise ProtocolError(
                    f"the answer to GET {path} says it has more items after {last!r}, but "
                    "gave that same cursor again: the listing would never end"
                )
            params = {**params, "after": last}
            params.pop("before", None)


def _rest_call(
    runtime: Runtime,
    method: str,
    path: str,
    *,
    params: Optional[Mapping[str, Any]] = None,
    payload: Optional[Mapping[str, Any]] = None,
    timeout: Optional[float],
) -> Any:
    """One REST call under the client's retry policy and the call's total ``timeout``."""
    runtime.check_open()
    config = runtime.config
    config.require_api_key()
    deadline = None if timeout is None else time.monotonic() + timeout

    def attempt() -> Any:
        # Each try has read_timeout for its answer, and never more than the call has left.
        until = time.monotonic() + config.read_timeout
        if deadline is not None:
            if time.monotonic() >= deadline:
                raise AttemptFailed(
                    _retry.TotalTimeoutError(f"the call did not finish within {timeout}s"),
                    sent=True,
                )
            until = min(until, deadline)
        return _sent(
            lambda: runtime.http.request_json(
                method, path, params=params, payload=payload, deadline=until
            )
        )

    return _retry.run(
        attempt,
        max_retries=config.max_retries,
        free_resends=0,
        deadline=deadline,
        stats=runtime.stats,
    )


def _sent(call: Callable[[], T]) -> T:
    # A REST call's failure always reached (or tried to reach) the server: the policy decides
    # by the error (429 and 5xx retry; a 404 or a bad request never does). A kept-alive
    # connection the server had dropped is cured by a new one: no pause.
    try:
        return call()
    except APIError as error:
        raise AttemptFailed(error, sent=True, stale=isinstance(error, KeepAliveDropped)) from None


def _response(data: Any, what: str) -> Response:
    if not isinstance(data, dict):
        raise ProtocolError(f"the answer to {what} is not a response object")
    return Response(data)


def _response_path(response_id: Any) -> str:
    if not isinstance(response_id, str) or not _RESPONSE_ID.fullmatch(response_id):
        raise ConfigurationError(
            f"response_id must be a response's id such as 'resp_...', not {response_id!r}"
        )
    return "/responses/" + quote(response_id, safe="")


def _strings(name: str, values: Any) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ConfigurationError(f"{name} must be a list of strings")
    if not all(isinstance(value, str) and value for value in values):
        raise ConfigurationError(f"{name} must be a list of non-empty strings")
    return list(values)
