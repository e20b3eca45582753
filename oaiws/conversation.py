"""``Conversation``: a multi-turn chain kept locally, continued on the connection that holds it.

The server caches the most recent response of each connection. A turn sent on that same
connection with ``previous_response_id`` and only its new items skips re-reading the whole
conversation; anywhere else, with ``store: false``, the server cannot find the previous
response at all. So a conversation keeps the full transcript here and lets each request
choose, on the connection it gets:

- the connection holds the chain: send ``previous_response_id`` plus the new items;
- it does not and ``store`` is false: send the whole transcript without
  ``previous_response_id`` (a replay; the answer is the same);
- it does not and ``store`` is true or unset: send the continuation (the server loads it);
- the server answers ``previous_response_not_found`` before anything was yielded: replay at
  once on the same connection.

Between turns the pool holds the connection for the conversation's next turn, at most
``affinity_wait`` seconds (see ``_pool``); ``close()`` gives it back at once, and dropping
the conversation (its finalizer) at the pool's next step, like a dropped stream closes its
connection.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

from . import _json
from ._closing import ClosesOnExit
from ._frames import MAX_NESTING, nested_deeper_than
from ._mux import LaneLease
from ._payload import build_payload
from ._stream import ResponseStream, collect_response
from .errors import ConfigurationError, ConversationBusyError, ProtocolError

if TYPE_CHECKING:
    from ._events import Response
    from ._pool import Pool
    from ._runtime import Runtime

__all__ = ["Conversation", "ConversationBusyError", "InputLike"]

# What ``send`` and ``stream`` accept: a user message as text, one input item, or a list.
InputLike = Union[str, Mapping[str, Any], Iterable[Union[str, Mapping[str, Any]]]]

# The conversation decides these itself on every turn.
_MANAGED_FIELDS = {
    "input": "pass the turn's input to send()/stream(), not as a default",
    "previous_response_id": "the conversation chains its turns itself: remove "
    "previous_response_id (use client.generate_response() to manage a chain yourself)",
    "generate": "use conv.prepare() to warm the conversation up",
    "conversation": "a server-side conversation and a local transcript cannot be combined: "
    "remove conversation=",
}

# The layout of Conversation.state(); a state of another version is refused.
STATE_VERSION = 1

# A response the chain may continue from; a failed one is not part of the conversation.
_KEPT_STATUSES = ("completed", "incomplete")


class _Chain:
    """The id the next turn continues from: shared with the finalizer, which must not hold
    the conversation itself."""

    __slots__ = ("last_response_id",)

    def __init__(self) -> None:
        self.last_response_id: Optional[str] = None


def _release_dropped(pool_ref: weakref.ReferenceType[Pool], chain: _Chain) -> None:
    # A finalizer: it may run in any thread, at any moment, even in the middle of a pool
    # transition in this very thread, so it only queues the release (wait=False).
    pool = pool_ref()
    response_id = chain.last_response_id
    if pool is not None and response_id is not None:
        pool.release_hold(response_id, wait=False)


class Conversation(ClosesOnExit):
    """A multi-turn conversation on a ``Client``: built by ``client.conversation(...)``.

    ``defaults`` are ``response.create`` fields sent with every turn (``model`` required;
    ``instructions``, ``tools``, ``store``, ``tool_choice``, ``metadata``, ...); ``timeout``
    bounds each turn in seconds (pool wait, retries and reading). One thread at a time:
    concurrent use raises ``ConversationBusyError``.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        timeout: Optional[float] = None,
        state: Optional[Mapping[str, Any]] = None,
        **defaults: Any,
    ) -> None:
        history: list[dict[str, Any]] = []
        last_response_id: Optional[str] = None
        complete = True
        if state is not None:
            if defaults:
                raise ConfigurationError(
                    "a resumed conversation takes its fields from its state: pass state= alone"
                    f" (got also {', '.join(sorted(defaults))})"
                )
            defaults, last_response_id, transcript = _from_state(state)
            complete = transcript is not None or last_response_id is None
            history = transcript or []
        _refuse_managed(defaults)
        # Checked now, before any traffic: a bad default fails here, not at the first turn.
        build_payload({**defaults, "input": []})
        self._runtime = runtime
        self._defaults = dict(defaults)
        self._timeout = timeout
        self._history = history
        # False when resumed without its transcript (store not false): the chain is then only
        # on the server, and a turn it cannot find there fails instead of replaying half of it.
        self._complete = complete
        self._chain = _Chain()
        self._chain.last_response_id = last_response_id
        self._busy = threading.Lock()
        # With lanes: the lane this conversation's turns run on (its cache holds the chain).
        # Dropped with the conversation, it frees the lane (the pool holds it weakly).
        self._lease = LaneLease() if runtime.lanes is not None else None
        # Dropped without close(): the connection held for the next turn goes back at the
        # pool's next step (a finalizer may only queue it: see Pool.release_hold).
        weakref.finalize(self, _release_dropped, weakref.ref(runtime.pool), self._chain)

    # -- state ------------------------------------------------------------------------

    @property
    def last_response_id(self) -> Optional[str]:
        """The id the next turn continues from (``None`` before the first turn)."""
        return self._chain.last_response_id

    @property
    def history(self) -> list[dict[str, Any]]:
        """The full transcript: every input item and every output item, in order (a copy).

        User turns given as text appear as ``{"role": "user", "content": text}``; output
        items appear as the server returned them. A failed or interrupted turn is not in it.
        """
        return copy.deepcopy(self._history)

    @property
    def defaults(self) -> dict[str, Any]:
        """The fields sent with every turn (a copy)."""
        return copy.deepcopy(self._defaults)

    def state(self, *, transcript: Optional[bool] = None) -> dict[str, Any]:
        """The conversation as plain JSON data, to resume it in any process of any machine
        with ``client.conversation(state=...)`` (same client settings).

        It holds the fields sent with every turn, the id the next turn continues from and,
        where a replay may need it, the transcript: by default only with ``store=False`` (the
        server keeps nothing; a resumed turn replays it), since with storage on a resumed
        turn continues from the stored response. ``transcript=True`` keeps it anyway (a
        stored response can expire), ``transcript=False`` never. Items are kept as a replay
        sends them (with ``store=False``: without ids, reasoning only with its encrypted
        content). Not during a turn (``ConversationBusyError``).
        """
        with self._turn():
            state: dict[str, Any] = {
                "version": STATE_VERSION,
                "defaults": self._defaults,
                "last_response_id": self._chain.last_response_id,
            }
            keep = self._defaults.get("store") is False if transcript is None else transcript
            if keep:
                if not self._complete:
                    raise ConfigurationError(
                        "this conversation was resumed without its transcript: it cannot "
                        "save one (use transcript=False)"
                    )
                state["transcript"] = self._replay_input([], self._defaults.get("store"))
            # Every field and item was sent as JSON already (checked before sending), so the
            # round trip cannot fail: it only makes the copy plain (lists, not tuples).
            plain: dict[str, Any] = _json.loads(_json.dumps(state))
            return plain

    # -- turns ------------------------------------------------------------------------

    def send(
        self, input: InputLike, *, timeout: Optional[float] = None, **overrides: Any
    ) -> Response:
        """Send one turn and return its finished ``Response`` (text, or function calls).

        ``input``: the user's text, a ``function_call_output`` item (or any input item), or a
        list of them. ``overrides``: fields for this turn only (``tool_choice``, ...). Since
        nothing is shown before the end, a connection lost midway is retried as a whole
        (within ``max_retries``), by replay when the chain's connection is gone. A ``failed``
        response is returned, not raised, and is not added to the transcript.
        """
        items = _as_items(input)
        with self._turn():
            payload, replay = self._plan(items, overrides)
            payload, seconds = self._runtime.prepare(payload, self._turn_timeout(timeout))
            response = collect_response(
                self._runtime,
                payload,
                timeout=seconds,
                replay=replay,
                hold=True,
                lease=self._lease,
            )
            self._commit(items, response)
        return response

    def stream(
        self, input: InputLike, *, timeout: Optional[float] = None, **overrides: Any
    ) -> ResponseStream:
        """Send one turn and return its events as they arrive (a ``ResponseStream``).

        Same input and options as ``send``. Nothing is sent until the first ``next()``; the
        turn joins the transcript when its terminal event is read, before that event is
        yielded. A stream that ends early (an interruption, ``break``, ``close()``) leaves the
        transcript as it was, and the next turn works (by replay when needed).
        """
        items = _as_items(input)
        _refuse_managed(overrides)
        seconds = self._turn_timeout(timeout)
        # Checked now, like every field of generate_response(), before anything is sent.
        self._runtime.prepare({**self._defaults, **overrides, "input": items}, seconds)
        turn = _StreamTurn(self, items, overrides)
        placeholder = {"model": self._defaults.get("model")}
        return ResponseStream(
            self._runtime, placeholder, timeout=seconds, turn=turn, lease=self._lease
        )

    def prepare(self, *, timeout: Optional[float] = None) -> Response:
        """Warm a connection up for this conversation: ``generate: false`` with its model,
        instructions, tools and transcript so far (nothing, for a new conversation).

        The server prepares its state and answers with an id but no output; the next turn
        continues from it on that connection, so it starts faster. Costs one round trip.
        """
        with self._turn():
            fields = {**self._defaults, "generate": False}
            if not self._complete:
                # Resumed without its transcript: the context is the server's chain, so the
                # warm-up continues from it.
                fields["previous_response_id"] = self._chain.last_response_id
                fields["input"] = []
            else:
                transcript = self._replay_input([], self._defaults.get("store"))
                if transcript:
                    fields["input"] = transcript
            payload, seconds = self._runtime.prepare(fields, self._turn_timeout(timeout))
            response = collect_response(
                self._runtime, payload, timeout=seconds, hold=True, lease=self._lease
            )
            if response.status in _KEPT_STATUSES and response.id is not None:
                self._chain.last_response_id = response.id
        return response

    def close(self) -> None:
        """Give the connection held for the next turn back to the other callers now.

        The transcript stays; a later turn still works (by replay if the connection was
        taken meanwhile). Idempotent; also the end of a ``with`` block.
        """
        response_id = self._chain.last_response_id
        if response_id is not None and not self._runtime.closed:
            self._runtime.pool.release_hold(response_id)
        if self._lease is not None:
            self._lease.release()
            self._lease = LaneLease()

    def __repr__(self) -> str:
        return (
            f"<oaiws.Conversation model={self._defaults.get('model')!r} "
            f"items={len(self._history)} last_response_id={self._chain.last_response_id!r}>"
        )

    # -- the chain --------------------------------------------------------------------

    def _turn(self) -> _Busy:
        return _Busy(self._busy)

    def _turn_timeout(self, timeout: Optional[float]) -> Optional[float]:
        return self._timeout if timeout is None else timeout

    def _plan(
        self, items: list[dict[str, Any]], overrides: Mapping[str, Any]
    ) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
        """The turn's continuation payload and its replay (``None``: nothing to continue)."""
        _refuse_managed(overrides)
        fields = {**self._defaults, **overrides}
        full = {**fields, "input": self._replay_input(items, fields.get("store"))}
        if self._chain.last_response_id is None:
            return full, None
        continuation = {
            **fields,
            "input": items,
            "previous_response_id": self._chain.last_response_id,
        }
        if not self._complete:
            return continuation, None  # no transcript here to replay: only the server's chain
        return continuation, build_payload(full)

    def _replay_input(self, items: list[dict[str, Any]], store: Any) -> list[dict[str, Any]]:
        replayed = (_replayable(item, store) for item in self._history)
        return [item for item in replayed if item is not None] + items

    def _commit(self, items: list[dict[str, Any]], response: Response) -> None:
        if response.status not in _KEPT_STATUSES or response.id is None:
            return
        output = response.get("output")
        kept = (
            [item for item in output if isinstance(item, dict)] if isinstance(output, list) else []
        )
        if any(nested_deeper_than(item, MAX_NESTING) for item in kept):
            # Kept, the item would be deep-copied and re-encoded in every replay, past what
            # either can do; refused, the conversation goes on from its previous turn.
            self._runtime.pool.release_hold(response.id)
            raise ProtocolError(
                f"the server's output for this turn is nested deeper than {MAX_NESTING} levels;"
                " the turn is not added to the conversation",
                response_id=response.id,
            )
        self._history.extend(copy.deepcopy(items))
        self._history.extend(copy.deepcopy(kept))
        self._chain.last_response_id = response.id


class _Busy:
    """Enter a turn, or fail at once when another thread is in one."""

    __slots__ = ("_lock",)

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            raise ConversationBusyError(
                "this Conversation is in the middle of a turn in another thread (or an "
                "unfinished stream): a conversation is used by one thread at a time; give "
                "each thread its own conversation, they can share one client"
            )

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


class _StreamTurn:
    """The ``Turn`` of ``Conversation.stream``: planned at the first ``next()``."""

    __slots__ = ("_busy", "_conversation", "_items", "_overrides")

    def __init__(
        self, conversation: Conversation, items: list[dict[str, Any]], overrides: Any
    ) -> None:
        self._conversation = conversation
        self._items = items
        self._overrides = dict(overrides)
        self._busy: Optional[_Busy] = None

    def begin(self) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
        busy = self._conversation._turn()
        busy.__enter__()
        self._busy = busy
        payload, replay = self._conversation._plan(self._items, self._overrides)
        return build_payload(payload), replay

    def steered(self, response: Response, steer_input: list[dict[str, Any]]) -> None:
        # The steered response is a turn of its own; the successor answers the steering input.
        self._conversation._commit(self._items, response)
        self._items = steer_input

    def finished(self, response: Response, pending_input: list[dict[str, Any]]) -> None:
        conversation = self._conversation
        conversation._commit(self._items, response)
        if pending_input and conversation.last_response_id == response.id:
            # Steering input the server holds for the request that continues this response
            # (response.steer.pending): it puts it first in that request's input, so the
            # transcript has it next (and a saved state keeps it).
            conversation._history.extend(copy.deepcopy(pending_input))

    def end(self) -> None:
        busy, self._busy = self._busy, None
        if busy is not None:
            busy.__exit__()


def _from_state(
    state: Any,
) -> tuple[dict[str, Any], Optional[str], Optional[list[dict[str, Any]]]]:
    """``(defaults, last_response_id, transcript or None)`` of a saved state, checked."""
    if not isinstance(state, Mapping):
        raise ConfigurationError(
            f"state must be a dict from Conversation.state(), not {type(state).__name__}"
        )
    if state.get("version") != STATE_VERSION:
        raise ConfigurationError(
            f"state version {state.get('version')!r} is not one this oaiws reads ({STATE_VERSION})"
        )
    unknown = sorted(set(state) - {"version", "defaults", "last_response_id", "transcript"})
    if unknown:
        raise ConfigurationError(f"state has unknown keys: {', '.join(unknown)}")
    defaults = state.get("defaults")
    if not isinstance(defaults, Mapping):
        raise ConfigurationError("state['defaults'] must be a dict of fields")
    last = state.get("last_response_id")
    if last is not None and (not isinstance(last, str) or not last):
        raise ConfigurationError("state['last_response_id'] must be a response id or None")
    transcript = state.get("transcript")
    if transcript is not None and (
        not isinstance(transcript, list) or not all(isinstance(i, Mapping) for i in transcript)
    ):
        raise ConfigurationError("state['transcript'] must be a list of items")
    items = [copy.deepcopy(dict(item)) for item in transcript] if transcript is not None else None
    return copy.deepcopy(dict(defaults)), last, items


def _refuse_managed(fields: Mapping[str, Any]) -> None:
    for key, why in _MANAGED_FIELDS.items():
        if key in fields:
            raise ConfigurationError(f"{key} is managed by the conversation: {why}")


def _as_items(value: Any) -> list[dict[str, Any]]:
    """A turn's input as a list of items: text becomes a user message."""
    if isinstance(value, str):
        return [_user_message(value)]
    if isinstance(value, Mapping) or hasattr(value, "model_dump"):
        return [_as_item(value)]
    if isinstance(value, Iterable):
        items = [_user_message(v) if isinstance(v, str) else _as_item(v) for v in value]
        if items:
            return items
        raise ConfigurationError("a turn needs some input: text, an input item or a list")
    raise ConfigurationError(
        "input must be text, an input item (a dict such as a function_call_output) or a "
        f"list of them, not {type(value).__name__}"
    )


def _user_message(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _as_item(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return copy.deepcopy(dict(value))
    dump = getattr(value, "model_dump", None)  # typed models of the openai package
    if callable(dump):
        dumped = dump(exclude_none=True)
        if isinstance(dumped, dict):
            return dumped
    raise ConfigurationError(
        f"each input item must be a dict like {{'role': 'user', 'content': '...'}}, "
        f"not {type(value).__name__}"
    )


def _replayable(item: dict[str, Any], store: Any) -> Optional[dict[str, Any]]:
    """One transcript item as input of a replay.

    With ``store: false`` nothing was persisted, and the server refuses input items that
    name an id it cannot find: ids are left out, and reasoning items go only when they carry
    their ``encrypted_content`` (ask for it with ``include=["reasoning.encrypted_content"]``).
    With storage on, items go as they were returned.
    """
    if store is not False:
        return item
    if item.get("type") == "reasoning" and not item.get("encrypted_content"):
        return None
    return {key: value for key, value in item.items() if key != "id"}
