"""A Flask app that streams answers from one module-level ``oaiws.Client`` per process.

Endpoints:

- ``POST /ask`` ``{"prompt": "..."}``: the answer as ``text/plain``, token by token. A browser
  that hangs up closes the upstream WebSocket, which stops the server generating the rest
  (noticed at the next text chunk that cannot be written).
- ``POST /chat`` ``{"message": "..."}``: the next turn of this browser's conversation, streamed
  the same way. The Flask session cookie holds only the chat's id; the conversation's state
  (``conv.state()``, plain JSON) lives in a sqlite file that every worker process shares, so
  any worker can serve any turn.
- ``GET /stats``: ``client.pool_stats()`` of the worker that answers (see ``X-Worker-Pid``).

Run it against the embedded emulator, in two terminals::

    oaiws emulator --port 8765 --delta-delay 0.05
    OPENAI_BASE_URL=http://127.0.0.1:8765/v1 OPENAI_API_KEY=sk-test \\
        gunicorn -k gthread -w 2 --threads 4 --preload --chdir examples flask_app:app

then ``curl -N localhost:8000/ask -H 'content-type: application/json' -d '{"prompt": "Hi"}'``,
or ``curl -N -b jar -c jar localhost:8000/chat -H 'content-type: application/json' -d
'{"message": "Hi"}'`` a few times (the cookie jar keeps the conversation).

Environment: ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` (read by ``oaiws.Client``),
``OAIWS_MODEL`` (default ``gpt-5.5``), ``OAIWS_STORE`` (``true``/``false``, default ``true``:
with storage on, a resumed turn continues from the stored response and the saved state is
about 140 bytes; off, the state carries the transcript and a resumed turn replays it),
``OAIWS_CHAT_DB`` (the sqlite file, default ``oaiws-flask-chats.sqlite3`` in the temp
directory) and ``FLASK_SECRET_KEY`` (default: one generated once and kept in that file).
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import sqlite3
import tempfile
from collections.abc import Generator, Iterator
from contextlib import closing, contextmanager
from typing import Any, Optional

from flask import Flask, Response, jsonify, request, session

import oaiws

MODEL = os.environ.get("OAIWS_MODEL", "gpt-5.5")


def _private_dir(name: str) -> str:
    """A directory only this user can read: the chats and the cookie secret live there."""
    user = os.getuid() if hasattr(os, "getuid") else 0
    path = os.path.join(tempfile.gettempdir(), f"{name}-{user}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.stat(path)
    if hasattr(os, "getuid") and (info.st_uid != user or info.st_mode & 0o077):
        # Someone else made it (or opened it up): they could read the chats or plant a
        # cookie secret they know.
        raise RuntimeError(f"{path} is not private to this user: remove it or set OAIWS_CHAT_DB")
    return path


CHAT_DB = os.environ.get("OAIWS_CHAT_DB") or os.path.join(
    _private_dir("oaiws-flask"), "chats.sqlite3"
)
TIMEOUT = 120.0  # seconds for a whole answer: pool wait, retries and reading


def _flag(name: str, default: str) -> bool:
    value = os.environ.get(name, default).strip().lower()
    if value not in ("true", "false"):
        # A typo must not silently switch storage on or off.
        raise RuntimeError(f"{name} must be 'true' or 'false', not {value!r}")
    return value == "true"


STORE = _flag("OAIWS_STORE", "true")

# Built at import time, once per process: no network until the first request (a missing key
# is reported then, not here). With gunicorn --preload it is built in the master, and each
# forked worker gets a fresh, empty pool of its own: oaiws's pool is fork-safe.
client = oaiws.Client(max_connections=8, pool_timeout=10.0)
atexit.register(client.close)


@contextmanager
def _chat_db() -> Iterator[sqlite3.Connection]:
    # A connection per use: sqlite3 connections belong to one thread, and the file, not any
    # process's memory, is what every worker process shares. The timeout waits out another
    # process's write instead of failing.
    with closing(sqlite3.connect(CHAT_DB, timeout=10.0)) as db, db:  # commit, or roll back
        yield db


def _setup_chat_db() -> str:
    """Create the store if needed (every process may race here: each statement is safe to
    repeat) and return the secret that signs the session cookies."""
    with _chat_db() as db:
        # WAL: readers never wait for a writer, and one writer waits only for another.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS chats (id TEXT PRIMARY KEY, state TEXT NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value TEXT)")
        # Kept in the shared file, so that workers not forked from one master (no --preload)
        # still read each other's cookies: the first process to get here picks it.
        db.execute(
            "INSERT OR IGNORE INTO secrets VALUES ('flask_secret_key', ?)",
            (secrets.token_urlsafe(32),),
        )
        row = db.execute("SELECT value FROM secrets WHERE name = 'flask_secret_key'").fetchone()
    return str(row[0])


def _load_state(chat_id: str) -> Optional[dict[str, Any]]:
    with _chat_db() as db:
        row = db.execute("SELECT state FROM chats WHERE id = ?", (chat_id,)).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def _forget_state(chat_id: str) -> None:
    with _chat_db() as db:
        db.execute("DELETE FROM chats WHERE id = ?", (chat_id,))


def _save_state(chat_id: str, state: dict[str, Any]) -> None:
    with _chat_db() as db:
        db.execute(
            "INSERT INTO chats VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET state = excluded.state",
            (chat_id, json.dumps(state)),
        )


_shared_secret = _setup_chat_db()  # at import: the store exists before the first request

app = Flask(__name__)
app.secret_key = os.environ.get("FLASK_SECRET_KEY") or _shared_secret
# Lax: a cross-site POST (a form on another site) does not carry the session cookie.
app.config["SESSION_COOKIE_SAMESITE"] = "Lax"


class BadInput(Exception):
    """The request cannot be answered as sent: a 400."""


def _text_field(name: str) -> str:
    # Only application/json bodies are read, which also keeps a cross-site HTML form from
    # posting here. Parsed here, not by get_json: a body nested too deep for the parser
    # (RecursionError) is bad input too, not a 500.
    if not request.is_json:
        raise BadInput("send a JSON object with content-type application/json")
    try:
        body = json.loads(request.get_data())
    except (ValueError, RecursionError):
        raise BadInput("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadInput("send a JSON object with content-type application/json")
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{name!r} must be a non-empty string: it is the response's input")
    return value


def _deltas(stream: oaiws.ResponseStream) -> Generator[str, None, Optional[oaiws.OAIWSError]]:
    """The answer's text as it arrives, one ``response.output_text.delta`` at a time; returns
    the error that ended it early, if one did."""
    try:
        for event in stream:
            if event.type == "response.output_text.delta":
                yield event.delta
    except oaiws.OAIWSError as error:
        # The status line went out with the first chunk: say so in the body, where the reader
        # sees it.
        yield f"\n[error: {type(error).__name__}]\n"
        return error
    return None


@app.post("/ask")
def ask() -> Response:
    try:
        prompt = _text_field("prompt")
        # The fields are checked here, before anything is sent: a bad one is still a 400.
        stream = client.generate_response(model=MODEL, input=prompt, timeout=TIMEOUT)
    except (BadInput, oaiws.ConfigurationError) as error:
        return _error(400, str(error))

    def text() -> Iterator[str]:
        # When the browser goes away, the WSGI server closes this generator; leaving the with
        # block then closes the WebSocket, which stops the server generating (and billing).
        with stream:
            yield from _deltas(stream)

    # The generator needs nothing from the request context: everything it uses is bound here.
    return Response(text(), mimetype="text/plain; charset=utf-8")


@app.post("/chat")
def chat() -> Response:
    chat_id: Optional[str] = session.get("chat")
    try:
        message = _text_field("message")
        state = _load_state(chat_id) if chat_id else None
        conv = (
            client.conversation(state=state)
            if state is not None
            else client.conversation(model=MODEL, store=STORE)
        )
        stream = conv.stream(message, timeout=TIMEOUT)
    except (BadInput, oaiws.ConfigurationError) as error:
        return _error(400, str(error))
    if chat_id is None:
        # The cookie names the chat and holds nothing else: a transcript would soon outgrow a
        # cookie, and the id works in every worker. Flask sends it as the view returns, with
        # the headers, before the body streams.
        chat_id = session["chat"] = secrets.token_urlsafe(16)

    def text() -> Iterator[str]:
        # conv: a browser's next turn comes seconds later, maybe to another worker, so no
        # connection is held for it (the with block ends the conversation's hold).
        with conv, stream:
            failure = yield from _deltas(stream)
            # Saved only once the terminal event was read: a turn cut short (the browser hung
            # up, the connection broke) leaves the previous state, and the next turn goes on
            # from there. Two turns of one browser at once both continue from the same state,
            # and the later save wins (the other exchange drops out of the context).
            if stream.response is not None:
                _save_state(chat_id, conv.state())
            elif isinstance(failure, oaiws.PreviousResponseNotFoundError):
                # The server no longer has the chain (deleted, or past its retention): the
                # chat starts again rather than failing on every later message.
                _forget_state(chat_id)
                yield "[this conversation has expired: your next message starts a new one]\n"

    return Response(text(), mimetype="text/plain; charset=utf-8")


@app.get("/stats")
def stats() -> Response:
    return jsonify(client.pool_stats())


@app.after_request
def worker_pid(response: Response) -> Response:
    # Shows which worker process answered: turns of one chat spread across workers.
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


def _error(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response
