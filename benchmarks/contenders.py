"""The contenders: every way a synchronous Python program could talk to the Responses API.

Each one runs the same request (``request(fields)``) to its terminal event, reading what a
program reads: the type of every event and the text of every delta, which it joins and
returns with the number of events, so the benchmark can check every contender got the same
answer. Every contender is thread-safe: those that keep connections keep one per thread (or,
for oaiws, a pool), as a program with threads would.

1. ``raw_kept``: websocket-client on one kept connection per thread: the floor, nothing but
   the socket, the JSON decoder and the loop (tuned as an expert would: no pure-Python UTF-8
   check, orjson when installed).
2. ``raw_fresh``: websocket-client opening a new connection for every request.
3. ``sdk_ws_fresh``: the official SDK's ``client.responses.connect()`` per request (what a
   web view does without a pool).
4. ``sdk_ws_kept``: the official SDK with one kept ``connect()`` per thread.
5. ``sdk_http``: the official SDK over HTTP, ``client.responses.create(stream=True)``.
6. ``oaiws``: ``oaiws.Client.generate_response``.
7. ``oaiws_http``: the same over HTTP streaming, ``oaiws.Client(transport="http")``: what a
   program gets where WebSocket mode is not offered.

The raw contenders decode with orjson when it is installed (the fastest thing a hand-written
loop could do) unless ``OAIWS_JSON=json`` asks for the standard library, the same rule as
oaiws itself, so the floor always uses the decoder oaiws uses.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

TERMINAL = frozenset(
    {"response.completed", "response.failed", "response.incomplete", "response.done", "error"}
)
DELTA = "response.output_text.delta"
MODEL = "gpt-test"

# Order matters: it is the order of the table, floor first.
NAMES = ("raw_kept", "raw_fresh", "sdk_ws_fresh", "sdk_ws_kept", "sdk_http", "oaiws", "oaiws_http")
LABELS = {
    "raw_kept": "1 raw websocket-client, kept",
    "raw_fresh": "2 raw websocket-client, fresh",
    "sdk_ws_fresh": "3 openai connect() per request",
    "sdk_ws_kept": "4 openai connect() kept/thread",
    "sdk_http": "5 openai HTTP stream",
    "oaiws": "6 oaiws",
    "oaiws_http": "7 oaiws over HTTP",
}
OPEN_TIMEOUT = 10.0  # seconds for any handshake
# Contenders that keep connections open between requests (the others close them each time).
KEEPS_CONNECTIONS = ("raw_kept", "sdk_ws_kept", "sdk_http", "oaiws", "oaiws_http")


def json_loads() -> Callable[[Any], Any]:
    """The decoder of a hand-written loop: orjson if installed, unless OAIWS_JSON=json."""
    if os.environ.get("OAIWS_JSON", "").strip().lower() not in ("json", "stdlib"):
        try:
            import orjson  # noqa: PLC0415 - optional

            return orjson.loads  # type: ignore[no-any-return]
        except ImportError:
            pass
    return json.loads


@dataclass(frozen=True)
class Target:
    """Where the emulator listens; also travels to child processes as JSON."""

    websocket_url: str
    base_url: str
    api_key: str
    ca_path: Optional[str]

    @classmethod
    def of(cls, emulator: Any) -> Target:
        return cls(emulator.websocket_url, emulator.base_url, emulator.api_key, emulator.ca_path)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> Target:
        return cls(**json.loads(text))

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        if not self.ca_path:
            return None
        return ssl.create_default_context(cafile=self.ca_path)


def fields(deltas: int, tag: str = "") -> dict[str, Any]:
    """The ``response.create`` fields of one benchmark request (``store: false``: nothing
    accumulates in the emulator's store over a long run)."""
    return {
        "model": MODEL,
        "input": f"Benchmark request {tag}".strip(),
        "store": False,
        "metadata": {"emulator_deltas": str(deltas)},
    }


class Contender:
    name = ""

    def request(self, fields: dict[str, Any]) -> tuple[int, str]:
        """Run one request to its terminal event: (events read, the joined delta text)."""
        raise NotImplementedError

    def open_idle(self, count: int) -> None:
        """Open ``count`` connections and leave them idle (for the memory measurement)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _raise_for(kind: str, event: Any) -> None:
    if kind != "response.completed":
        raise RuntimeError(f"the request ended with {kind}: {event}")


def _read_sdk_events(events: Any, *, stop_at_terminal: bool) -> tuple[int, str]:
    """What every contender reads from the SDK's typed events: their count and the text."""
    parts: list[str] = []
    count = 0
    for event in events:
        count += 1
        kind = event.type
        if kind == DELTA:
            parts.append(event.delta)
        elif kind in TERMINAL:
            _raise_for(kind, event)
            if stop_at_terminal:
                break
    return count, "".join(parts)


# -- 1 and 2: websocket-client by hand --------------------------------------------------


class _Raw(Contender):
    def __init__(self, target: Target) -> None:
        import websocket  # noqa: PLC0415 - imported where used, so cold starts import only it

        self._websocket = websocket
        self._target = target
        self._sslopt = {"context": target.ssl_context()} if target.ca_path else None
        self._loads = json_loads()
        self._idle: list[Any] = []

    def _connect(self) -> Any:
        return self._websocket.create_connection(
            self._target.websocket_url,
            header=[f"Authorization: Bearer {self._target.api_key}"],
            sslopt=self._sslopt,
            timeout=OPEN_TIMEOUT,
            # What a careful hand-written loop does, and oaiws too: websocket-client's UTF-8
            # check is pure Python and costs most of the receive path; recv() still decodes
            # the text strictly (in C), so nothing invalid gets through.
            skip_utf8_validation=True,
        )

    def _exchange(self, ws: Any, fields: dict[str, Any]) -> tuple[int, str]:
        ws.send(json.dumps({"type": "response.create", **fields}))
        loads = self._loads
        parts: list[str] = []
        events = 0
        while True:
            event = loads(ws.recv())
            events += 1
            kind = event["type"]
            if kind == DELTA:
                parts.append(event["delta"])
            elif kind in TERMINAL:
                _raise_for(kind, event)
                return events, "".join(parts)

    def open_idle(self, count: int) -> None:
        self._idle += [self._connect() for _ in range(count)]

    def close(self) -> None:
        for ws in self._idle:
            ws.close()
        self._idle = []


class _PerThread:
    """One kept connection per thread, opened on the thread's first use, all closed together."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def get(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            kept, self._all = self._all, []
        for conn in kept:
            conn.close()


class _KeptPerThread:
    """Mixin for a contender that keeps one connection per thread: its ``_connect`` opens a
    thread's connection on first use, its ``_exchange`` runs one request on it."""

    _connect: Callable[[], Any]
    _exchange: Callable[[Any, dict[str, Any]], tuple[int, str]]

    def __init__(self, target: Target) -> None:
        super().__init__(target)  # the contender class that follows this mixin
        self._kept = _PerThread(self._connect)

    def request(self, fields: dict[str, Any]) -> tuple[int, str]:
        return self._exchange(self._kept.get(), fields)

    def close(self) -> None:
        self._kept.close()
        super().close()


class RawKept(_KeptPerThread, _Raw):
    name = "raw_kept"


class RawFresh(_Raw):
    name = "raw_fresh"

    def request(self, fields: dict[str, Any]) -> tuple[int, str]:
        ws = self._connect()
        try:
            return self._exchange(ws, fields)
        finally:
            ws.close()


# -- 3, 4 and 5: the official SDK --------------------------------------------------------


class _SDK(Contender):
    def __init__(self, target: Target) -> None:
        import openai  # noqa: PLC0415 - imported where used: the other contenders run without it

        context = target.ssl_context()
        self._sdk = openai.OpenAI(
            api_key=target.api_key,
            base_url=target.base_url,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(verify=context if context else True),
        )
        # The SDK's transport (the websockets sync client) now and then fails an upgrade
        # under TLS: it stalls, or ends with "no close frame received or sent" after an
        # ssl.SSLError (measured: 7 in 300 handshakes with up to 300 open; none without TLS,
        # none with websocket-client against the same emulator). The cause is a race in that
        # transport, described in docs/performance.md. Bound the stall; callers count and
        # report every failed upgrade.
        self._ws_options: dict[str, Any] = {"open_timeout": OPEN_TIMEOUT}
        if context is not None:
            self._ws_options["ssl"] = context
        self._idle: list[Any] = []
        self.connect_failures = 0

    def _connect(self) -> Any:
        return self._sdk.responses.connect(websocket_connection_options=self._ws_options).enter()

    @staticmethod
    def _exchange(conn: Any, fields: dict[str, Any]) -> tuple[int, str]:
        conn.response.create(**fields)
        # A WebSocket connection outlives the response: stop at its terminal event.
        return _read_sdk_events(conn, stop_at_terminal=True)

    def open_idle(self, count: int) -> None:
        while len(self._idle) < count:
            try:
                self._idle.append(self._connect())
            except Exception:
                # The failed upgrade described at OPEN_TIMEOUT (it shows as a timeout, a
                # ConnectionClosedError or an ssl.SSLError, depending on where the race
                # lands): counted and reported, then tried again.
                self.connect_failures += 1
                if self.connect_failures > count:
                    raise

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle = []
        self._sdk.close()


class SDKWebSocketFresh(_SDK):
    name = "sdk_ws_fresh"

    def request(self, fields: dict[str, Any]) -> tuple[int, str]:
        with self._sdk.responses.connect(websocket_connection_options=self._ws_options) as conn:
            return self._exchange(conn, fields)


class SDKWebSocketKept(_KeptPerThread, _SDK):
    name = "sdk_ws_kept"


class SDKHTTP(_SDK):
    name = "sdk_http"

    def request(self, fields: dict[str, Any]) -> tuple[int, str]:
        with self._sdk.responses.create(stream=True, **fields) as stream:
            # Read to the end of the body, past the terminal event: a response left unread
            # would not give its keep-alive connection back to httpx's pool.
            return _read_sdk_events(stream, stop_at_terminal=False)

    def open_idle(self, count: int) -> None:
        # An HTTP client keeps a connection only after a request used it: run ``count``
        # requests at once, each waiting a moment before its first event so that they all
        # overlap, and the pool ends up holding ``count`` idle keep-alive sockets.
        slow = fields(1, "idle")
        slow["metadata"]["emulator_first_event_delay_ms"] = "300"
        threads = [threading.Thread(target=self.request, args=(slow,)) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


# -- 6: oaiws ------------------------------------------------------------------------------


class OAIWS(Contender):
    name = "oaiws"
    transport = "websocket"

    def __init__(self, target: Target, *, max_connections: int = 10, min_connections: int = 0):
        import oaiws  # noqa: PLC0415 - imported where used, so cold starts import only it

        self._client = oaiws.Client(
            api_key=target.api_key,
            base_url=target.base_url,
            verify=target.ca_path or True,
            max_connections=max_connections,
            min_connections=min_connections,
            transport=self.transport,
        )

    def request(self, fields: dict[str, Any]) -> tuple[int, str]:
        parts: list[str] = []
        events = 0
        for event in self._client.generate_response(**fields):
            events += 1
            if event.type == DELTA:
                parts.append(event.delta)
        # The stream raises on an error event and ends at the terminal event.
        return events, "".join(parts)

    def open_idle(self, count: int) -> None:
        # The documented way to keep warm idle connections: min_connections (the client must
        # be built with min_connections=count), opened by the pool in the background.
        deadline = time.monotonic() + 60
        while self._client.pool_stats()["connections_idle"] < count:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the pool did not open {count} connections: build the "
                    f"contender with min_connections={count}"
                )
            time.sleep(0.01)

    def pool_stats(self) -> dict[str, Any]:
        return self._client.pool_stats()

    def close(self) -> None:
        self._client.close()


# -- 7: oaiws over HTTP ---------------------------------------------------------------------


class OAIWSHTTP(OAIWS):
    name = "oaiws_http"
    transport = "http"


def attempt(
    contender: Contender, fields: dict[str, Any], failures: dict[str, list[str]]
) -> Optional[tuple[int, str]]:
    """``contender.request``, with a failure recorded (and shown in the results) instead of
    ending the whole run: a benchmark of other people's code must report their failures,
    not die of them."""
    try:
        return contender.request(fields)
    except Exception as error:
        failures.setdefault(contender.name, []).append(f"{type(error).__name__}: {error}")
        return None


def first_answer(
    contender: Contender, fields: dict[str, Any], failures: dict[str, list[str]], tries: int = 3
) -> tuple[int, str]:
    """The first answer of a contender, tried up to ``tries`` times: the SDK's WebSocket
    transport now and then stalls in its upgrade (see SDKWebSocketKept), and one stall must
    not end the whole run. Every failure is recorded; the last one is raised."""
    for attempt_number in range(1, tries + 1):
        try:
            return contender.request(fields)
        except Exception as error:
            failures.setdefault(contender.name, []).append(f"{type(error).__name__}: {error}")
            if attempt_number == tries:
                raise
    raise AssertionError("unreachable: tries must be at least 1")


def make(name: str, target: Target, **options: Any) -> Contender:
    """A contender by name; ``options`` are oaiws ``Client`` options (others ignore them)."""
    if name == "raw_kept":
        return RawKept(target)
    if name == "raw_fresh":
        return RawFresh(target)
    if name == "sdk_ws_fresh":
        return SDKWebSocketFresh(target)
    if name == "sdk_ws_kept":
        return SDKWebSocketKept(target)
    if name == "sdk_http":
        return SDKHTTP(target)
    if name == "oaiws":
        return OAIWS(target, **options)
    if name == "oaiws_http":
        return OAIWSHTTP(target, **options)
    raise ValueError(f"unknown contender {name!r}; choose from {', '.join(NAMES)}")
