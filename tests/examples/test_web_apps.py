"""examples/flask_app.py and examples/django_app work under a real gunicorn (gthread, two
preloaded workers): answers stream token by token, a browser that hangs up closes its upstream
WebSocket, and chats whose turns land on any worker answer exactly as an uninterrupted
conversation does, with storage on (continued from storage) and off (the transcript replayed).

One emulator serves the whole module; each app/store combination gets one gunicorn, started
when its first test needs it and stopped (process group, SIGTERM then SIGKILL) after its last.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("gunicorn")
pytest.importorskip("flask")
pytest.importorskip("django")

from webapps import REQUEST_TIMEOUT, Gunicorn, browser, read_stream, wait_for

import oaiws
from oaiws.testing import Emulator, expected_text

MODEL = "gpt-test"
DELTAS = 20
DELTA_DELAY = 0.04  # so an answer takes 0.8 s: long enough to see it stream
BROWSERS = 3
TURNS = 4
# A new TCP connection per request: with --reuse-port the kernel then spreads a browser's
# turns over both workers (a kept-alive connection would stay with one).
CLOSE = {"Connection": "close"}

# (app, store). The /ask tests take the first two: same values at the same indices, so any
# pytest version groups the tests of one gunicorn together and starts each once.
FLASK, DJANGO = ("flask", True), ("django", True)
ASK_SERVERS = [pytest.param(FLASK, id="flask"), pytest.param(DJANGO, id="django")]
CHAT_SERVERS = [
    pytest.param(FLASK, id="flask-store"),
    pytest.param(DJANGO, id="django-store"),
    pytest.param(("flask", False), id="flask-nostore"),
    pytest.param(("django", False), id="django-nostore"),
]


@dataclass
class Served:
    app: str
    store: bool
    gunicorn: Gunicorn

    @property
    def url(self) -> str:
        return self.gunicorn.url


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(deltas=DELTAS, delta_delay=DELTA_DELAY) as emu:
        yield emu


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, emulator: Emulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    app, store = request.param
    tmp = tmp_path_factory.mktemp(f"{app}-{'store' if store else 'nostore'}")
    env = {
        "OPENAI_BASE_URL": emulator.base_url,
        "OPENAI_API_KEY": emulator.api_key,
        "OAIWS_MODEL": MODEL,
        "OAIWS_STORE": "true" if store else "false",
        "OAIWS_CHAT_DB": str(tmp / "chats.sqlite3"),  # Flask's chat store
        "OAIWS_SESSION_DIR": str(tmp / "sessions"),  # Django's session files
    }
    gunicorn = Gunicorn.start(app, env, tmp / "gunicorn.log")
    try:
        yield Served(app, store, gunicorn)
    finally:
        gunicorn.stop()


def answer_of(prompt: str) -> str:
    return expected_text(prompt, deltas=DELTAS)


def reference_chats(emulator: Emulator, store: bool, chats: list[list[str]]) -> list[list[str]]:
    """The answers of each chat sent as one uninterrupted conversation, through oaiws."""

    def run(messages: list[str]) -> list[str]:
        # The metadata only sets the pace (no delay between deltas); the emulator's text depends
        # on the instructions and the conversation alone, so the answers are the same.
        with client.conversation(
            model=MODEL, store=store, metadata={"emulator_delta_delay_ms": "0"}
        ) as conv:
            return [conv.send(message).output_text for message in messages]

    client = oaiws.Client(api_key=emulator.api_key, base_url=emulator.base_url)
    with client, ThreadPoolExecutor(len(chats)) as pool:
        return list(pool.map(run, chats))


@pytest.mark.parametrize("server", ASK_SERVERS, indirect=True)
def test_concurrent_asks_each_get_their_own_answer(server: Served) -> None:
    prompts = [f"question {n} from browser {n}" for n in range(12)]

    def ask(prompt: str) -> tuple[int, str, str]:
        with browser() as session:
            answer = session.post(
                f"{server.url}/ask", json={"prompt": prompt}, timeout=REQUEST_TIMEOUT
            )
            return answer.status_code, answer.headers["Content-Type"], answer.text

    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(ask, prompts))
    for prompt, (status, content_type, text) in zip(prompts, results):
        assert status == 200 and content_type.startswith("text/plain")
        assert text == answer_of(prompt)
    assert len({text for _, _, text in results}) == len(prompts)


@pytest.mark.parametrize("server", ASK_SERVERS, indirect=True)
def test_the_answer_streams_token_by_token(server: Served) -> None:
    with browser() as session:
        started = time.monotonic()
        with session.post(
            f"{server.url}/ask",
            json={"prompt": "stream this"},
            stream=True,
            timeout=REQUEST_TIMEOUT,
        ) as answer:
            assert answer.status_code == 200
            chunks, first = read_stream(answer, started)
        total = time.monotonic() - started
    assert b"".join(chunks).decode() == answer_of("stream this")
    # Each delta is written as it arrives (one HTTP chunk each), not collected first.
    assert len(chunks) == DELTAS, chunks
    assert total >= (DELTAS - 1) * DELTA_DELAY
    assert first < total / 3, (first, total)


@pytest.mark.parametrize("server", ASK_SERVERS, indirect=True)
def test_a_browser_hanging_up_closes_its_upstream_websocket(
    server: Served, emulator: Emulator
) -> None:
    with browser() as session:
        answer = session.post(
            f"{server.url}/ask",
            json={"prompt": "a long story"},
            headers=CLOSE,
            stream=True,
            timeout=REQUEST_TIMEOUT,
        )
        assert next(answer.iter_content(chunk_size=None))
        open_during = emulator.stats()["connections_open"]
        answer.close()  # the browser goes away: its TCP connection is closed
    wait_for(
        lambda: emulator.stats()["connections_open"] < open_during,
        10.0,
        "the app to close the upstream WebSocket",
    )
    # Counted from here, one more whole answer: it takes as long as the one cut short and
    # starts later, so had that one gone on it would complete meanwhile. Only the new one does.
    completed = emulator.stats()["responses_completed"]
    with browser() as session:
        after = session.post(f"{server.url}/ask", json={"prompt": "next"}, timeout=REQUEST_TIMEOUT)
    assert after.text == answer_of("next")
    # The emulator counts a response just after sending its last event: wait for the count.
    wait_for(
        lambda: emulator.stats()["responses_completed"] > completed,
        10.0,
        "the emulator to count the next answer",
    )
    assert emulator.stats()["responses_completed"] == completed + 1


@pytest.mark.parametrize("server", CHAT_SERVERS, indirect=True)
def test_chats_spread_over_workers_answer_as_one_conversation(
    server: Served, emulator: Emulator
) -> None:
    chats = [
        [f"{server.app} browser {b}, turn {t}: tell me about pools" for t in range(TURNS)]
        for b in range(BROWSERS)
    ]
    expected = reference_chats(emulator, server.store, chats)
    pids: set[str] = set()
    cookies: list[dict[str, str]] = []

    def converse(messages: list[str]) -> list[str]:
        # One browser, one turn at a time; the browsers run at once, so turns interleave.
        answers = []
        with browser() as session:
            for message in messages:
                answer = session.post(
                    f"{server.url}/chat",
                    json={"message": message},
                    headers=CLOSE,
                    timeout=REQUEST_TIMEOUT,
                )
                assert answer.status_code == 200, answer.text
                pids.add(answer.headers["X-Worker-Pid"])
                answers.append(answer.text)
            cookies.append(session.cookies.get_dict())
        return answers

    with ThreadPoolExecutor(BROWSERS) as pool:
        got = list(pool.map(converse, chats))
    assert got == expected
    assert len(pids) >= 2 and pids <= server.gunicorn.pids
    # The cookie names the state and never carries it (a transcript would outgrow a cookie).
    for jar in cookies:
        assert len(jar) == 1 and all(len(value) < 200 for value in jar.values()), jar


@pytest.mark.parametrize("server", CHAT_SERVERS, indirect=True)
def test_a_chat_turn_cut_short_is_not_saved(server: Served, emulator: Emulator) -> None:
    first, cut, then = (f"{server.app} {word}: go on" for word in ("first", "cut", "then"))
    (expected,) = reference_chats(emulator, server.store, [[first, then]])
    with browser() as session:
        url = f"{server.url}/chat"
        one = session.post(url, json={"message": first}, headers=CLOSE, timeout=REQUEST_TIMEOUT)
        assert one.text == expected[0]
        answer = session.post(
            url, json={"message": cut}, headers=CLOSE, stream=True, timeout=REQUEST_TIMEOUT
        )
        assert next(answer.iter_content(chunk_size=None))
        open_during = emulator.stats()["connections_open"]
        answer.close()
        wait_for(
            lambda: emulator.stats()["connections_open"] < open_during,
            10.0,
            "the app to close the upstream WebSocket of the cut turn",
        )
        two = session.post(url, json={"message": then}, headers=CLOSE, timeout=REQUEST_TIMEOUT)
    # The next turn goes on from the first: the cut one never joined the conversation.
    assert two.text == expected[1]


@pytest.mark.parametrize("server", ASK_SERVERS, indirect=True)
def test_bad_input_is_a_400_and_sends_nothing(server: Served, emulator: Emulator) -> None:
    requests_before = emulator.stats()["requests"]
    json_type = {"Content-Type": "application/json"}
    with browser() as session:
        for endpoint, field in (("ask", "prompt"), ("chat", "message")):
            cases: list[dict[str, Any]] = [
                {"data": "not json", "headers": {"Content-Type": "text/plain"}},
                {"data": '{"prompt": "a form would send this"}'},  # no JSON content type
                {"data": "{not json", "headers": json_type},
                {"json": ["a", "list"]},
                {"json": {}},
                {"json": {field: ""}},
                {"json": {field: "   "}},
                {"json": {field: 5}},
                {"json": {field: None}},
                {"json": {field: ["a list"]}},
                {"json": {"other": "hello"}},
                # Deeper than the JSON parser goes: bad input, not a 500.
                {"data": "[" * 100_000 + "]" * 100_000, "headers": json_type},
                # A lone surrogate: valid JSON, but not sendable as UTF-8.
                {"data": '{"' + field + '": "\\ud800 hi"}', "headers": json_type},
            ]
            for case in cases:
                answer = session.post(f"{server.url}/{endpoint}", timeout=REQUEST_TIMEOUT, **case)
                assert answer.status_code == 400, (endpoint, case, answer.text)
                assert answer.headers["Content-Type"].startswith("application/json")
                assert answer.json()["error"], (endpoint, case)
                assert answer.headers["X-Worker-Pid"] in server.gunicorn.pids
        stats = session.get(f"{server.url}/stats", timeout=REQUEST_TIMEOUT)
    assert stats.status_code == 200 and stats.json()["max_connections"] == 8
    assert stats.headers["X-Worker-Pid"] in server.gunicorn.pids
    assert emulator.stats()["requests"] == requests_before
