"""``Client``: the public entry point. Builds the runtime (configuration, pool, statistics)
that its streams and conversations share."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from ._closing import ClosesOnExit
from ._config import ClientConfig, display_url
from ._runtime import Runtime
from ._stream import ResponseStream, collect_response
from .batch import BatchRun
from .conversation import Conversation
from .errors import ConfigurationError
from .responses import Responses

if TYPE_CHECKING:
    from ._events import Response
    from .batch import BatchProgress

__all__ = ["Client"]


class Client(ClosesOnExit):
    """A thread-safe client of the Responses API over WebSocket, with a pool of connections.

    Build one per process (a module-level client in a web app) and share it between threads::

        client = oaiws.Client()                       # OPENAI_API_KEY from the environment
        for event in client.generate_response(model="gpt-5.5", input="Hello"):
            if event.type == "response.output_text.delta":
                print(event.delta, end="")

    Options (every one also documented on ``ClientConfig``): credentials and URLs
    (``api_key``, ``base_url``, ``websocket_url``, ``organization``, ``project``,
    ``default_headers``), the pool (``max_connections``, ``min_connections``,
    ``pool_timeout``, ``max_connection_age``, ``connection_age_margin``, ``idle_timeout``,
    ``ping_interval``), deadlines (``connect_timeout`` for the handshake, ``read_timeout``
    for the silence between two events), ``max_retries``, TLS ``verify`` and ``proxy``.
    ``affinity_wait`` (seconds, default 1.0; 0 turns holds off) is how long a conversation's
    connection is kept for its next turn, and so the most a hold may delay anyone else.
    ``max_message_size`` (bytes, default 64 MiB) is the largest message accepted from the
    server. ``transport`` is ``"auto"`` (WebSocket, falling back to HTTP streaming where the
    server has no WebSocket mode), ``"websocket"`` or ``"http"``. ``lanes=True`` runs many
    responses at once on each connection, in named lanes (servers that have them: see
    docs/lanes.md; default ``False``). Nothing touches the network
    until the first request (``min_connections`` are opened in the background at once).

    ``client.responses`` is the openai-python-shaped surface: ``create`` (also
    ``background=True``), ``retrieve``, ``delete``, ``cancel``, ``input_items.list``.
    """

    def __init__(
        self,
        *,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        websocket_url: Optional[str] = None,
        organization: Optional[str] = None,
        project: Optional[str] = None,
        default_headers: Optional[Mapping[str, str]] = None,
        max_connections: int = 10,
        min_connections: int = 0,
        pool_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        max_connection_age: Optional[float] = None,
        connection_age_margin: float = 300.0,
        idle_timeout: Optional[float] = 300.0,
        ping_interval: Optional[float] = 20.0,
        max_retries: int = 2,
        verify: Union[bool, str] = True,
        proxy: Optional[str] = None,
        affinity_wait: float = 1.0,
        max_message_size: int = 64 * 1024 * 1024,
        transport: str = "auto",
        lanes: bool = False,
    ) -> None:
        config = ClientConfig.resolve(
            api_key=api_key,
            base_url=base_url,
            websocket_url=websocket_url,
            organization=organization,
            project=project,
            default_headers=default_headers,
            max_connections=max_connections,
            min_connections=min_connections,
            pool_timeout=pool_timeout,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_connection_age=max_connection_age,
            connection_age_margin=connection_age_margin,
            idle_timeout=idle_timeout,
            ping_interval=ping_interval,
            max_retries=max_retries,
            verify=verify,
            proxy=proxy,
            affinity_wait=affinity_wait,
            max_message_size=max_message_size,
            transport=transport,
            lanes=lanes,
        )
        self._runtime = Runtime(config)
        self.responses = Responses(self._runtime)

    @property
    def config(self) -> ClientConfig:
        """The resolved options (its repr never shows the key)."""
        return self._runtime.config

    def generate_response(
        self, *, timeout: Optional[float] = None, **fields: Any
    ) -> ResponseStream:
        """Start a response and return its events as an iterator (also a context manager).

        ``fields`` are those of ``response.create`` (``model``, ``input``, ``instructions``,
        ``tools``, ``previous_response_id``, ...); keys set to ``None`` are left out. They are
        checked here, before anything is sent; the first ``next()`` acquires a connection and
        sends. ``timeout`` bounds the whole request in seconds (pool wait, retries and
        reading), on top of the client's ``read_timeout`` between two events.
        """
        payload, seconds = self._runtime.prepare(fields, timeout)
        return ResponseStream(self._runtime, payload, timeout=seconds)

    def create_response(self, *, timeout: Optional[float] = None, **fields: Any) -> Response:
        """Run a response to its end and return it.

        A ``failed`` or ``incomplete`` response is returned (see ``Response.status``), not
        raised; an ``error`` event raises. Since nothing was shown to the caller, a connection
        lost midway is retried as a whole request within ``max_retries``.
        """
        payload, seconds = self._runtime.prepare(fields, timeout)
        return collect_response(self._runtime, payload, timeout=seconds)

    def conversation(
        self,
        *,
        timeout: Optional[float] = None,
        state: Optional[Mapping[str, Any]] = None,
        **defaults: Any,
    ) -> Conversation:
        """A multi-turn conversation that keeps its transcript and chains its turns.

        ``defaults`` are ``response.create`` fields sent with every turn (``model`` required;
        ``instructions``, ``tools``, ``store``, ...); ``timeout`` bounds each turn. Turns
        continue on the connection holding the previous response and replay the transcript
        when that is not possible; see ``Conversation``. ``state``: resume a conversation
        saved with ``conv.state()``, here or in another process (its fields come from the
        state). Checked now, nothing is sent.
        """
        self._runtime.check_open()
        return Conversation(
            self._runtime, timeout=Runtime.check_timeout(timeout), state=state, **defaults
        )

    def warm(self, *, timeout: Optional[float] = None, **fields: Any) -> Response:
        """Warm a connection up: ``generate: false`` with these fields (``model``,
        ``instructions``, ``tools``, optional ``input``...), no output.

        Returns the warm-up ``Response``; pass its ``id`` as ``previous_response_id`` of the
        first real request, which is then routed to the same connection and starts faster.
        """
        if "generate" in fields:
            raise ConfigurationError("warm() sends generate=False itself: remove generate=")
        payload, seconds = self._runtime.prepare({**fields, "generate": False}, timeout)
        return collect_response(self._runtime, payload, timeout=seconds)

    def batch(
        self,
        requests: Iterable[Any],
        *,
        concurrency: Optional[int] = None,
        ordered: bool = False,
        max_requests_per_minute: Optional[float] = None,
        max_tokens_per_minute: Optional[float] = None,
        progress: Union[bool, Callable[[BatchProgress], None], None] = None,
        timeout: Optional[float] = None,
    ) -> BatchRun:
        """Run many requests over this client's pool; iterate for one ``BatchResult`` each.

        ``requests``: any iterable (read lazily) of ``response.create`` field dicts or Batch API
        lines (``custom_id``, ``method``, ``url``, ``body``). ``concurrency``: requests in
        flight at most (default ``max_connections``). ``ordered``: yield in input order (a
        window of ``4 * concurrency``) instead of completion order. ``max_requests_per_minute``
        and ``max_tokens_per_minute``: spread starts evenly under these budgets (tokens
        estimated as input bytes / 4 plus ``max_output_tokens``); a 429 pauses starts for its
        ``retry-after`` and halves the concurrency, which grows back by one per round trip.
        ``progress``: ``True`` for a tqdm bar (``oaiws[cli]``), or a callable given a
        ``BatchProgress`` after each result. ``timeout``: each request's own, as in
        ``create_response``. Failures are results (``.error``); see ``oaiws.batch``.
        """
        return BatchRun(
            self._runtime,
            requests,
            concurrency=concurrency,
            ordered=ordered,
            max_requests_per_minute=max_requests_per_minute,
            max_tokens_per_minute=max_tokens_per_minute,
            progress=progress,
            timeout=timeout,
        )

    def pool_stats(self) -> dict[str, Any]:
        """The pool's gauges and counters (handshakes, requests, connections open/idle/in use,
        retries, resends, ``affinity_hits``, ``affinity_misses``, ``replays``, holds...)."""
        stats = self._runtime.pool.stats()
        lanes = self._runtime.lanes
        if lanes is not None:
            stats.update(lanes.stats())
        return stats

    def lane_stats(self) -> list[dict[str, Any]]:
        """With ``lanes=True``: one entry per lane of every open connection (``connection``,
        ``stream_id``, ``state``, ``busy``, ``abandoned``, ``leased``, ``requests``,
        ``idle_seconds``); ``[]`` without lanes."""
        lanes = self._runtime.lanes
        return [] if lanes is None else lanes.lane_stats()

    def close(self) -> None:
        """Close every connection: idle ones now, those serving a request when the request
        ends. Idempotent; later calls raise ``ClientClosedError``."""
        self._runtime.close()

    @property
    def closed(self) -> bool:
        return self._runtime.closed

    def __repr__(self) -> str:
        config = self._runtime.config
        state = "closed" if self._runtime.closed else "open"
        return (
            f"<oaiws.Client {display_url(config.websocket_url)} "
            f"max_connections={config.max_connections} {state}>"
        )
