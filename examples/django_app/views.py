"""The views and URLs of the Django example (see wsgi.py for how to run it)."""

from __future__ import annotations

import atexit
import json
import os
from collections.abc import Generator, Iterator
from typing import Any, Callable, Optional

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.http import require_GET, require_POST

import oaiws

MODEL = os.environ.get("OAIWS_MODEL", "gpt-5.5")
TIMEOUT = 120.0  # seconds for a whole answer: pool wait, retries and reading
STATE_KEY = "oaiws_chat"  # the session key holding the conversation's state


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


class BadInput(Exception):
    """The request cannot be answered as sent: a 400."""


def _text_field(request: HttpRequest, name: str) -> str:
    # Only application/json bodies are read, which keeps a cross-site HTML form from posting
    # here (there is no CSRF middleware: see settings.py).
    if request.content_type != "application/json":
        raise BadInput("send a JSON object with content-type application/json")
    try:
        body = json.loads(request.body)
    except (ValueError, RecursionError):  # nested too deep for the parser: bad input too
        raise BadInput("the body is not valid JSON") from None
    value = body.get(name) if isinstance(body, dict) else None
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


@require_POST
def ask(request: HttpRequest) -> HttpResponse:
    try:
        prompt = _text_field(request, "prompt")
        # The fields are checked here, before anything is sent: a bad one is still a 400.
        stream = client.generate_response(model=MODEL, input=prompt, timeout=TIMEOUT)
    except (BadInput, oaiws.ConfigurationError) as error:
        return _error(400, str(error))

    def text() -> Iterator[str]:
        # When the browser goes away, the WSGI server closes the response, and Django closes
        # this generator; leaving the with block then closes the WebSocket, which stops the
        # server generating (and billing) the rest.
        with stream:
            yield from _deltas(stream)

    return StreamingHttpResponse(text(), content_type="text/plain; charset=utf-8")


@require_POST
def chat(request: HttpRequest) -> HttpResponse:
    session = request.session
    try:
        message = _text_field(request, "message")
        state: Any = session.get(STATE_KEY)
        conv = (
            client.conversation(state=state)
            if state is not None
            else client.conversation(model=MODEL, store=STORE)
        )
        stream = conv.stream(message, timeout=TIMEOUT)
    except (BadInput, oaiws.ConfigurationError) as error:
        return _error(400, str(error))
    if state is None:
        # A new chat: SessionMiddleware saves the session as the view returns, before the
        # body streams, so the cookie sent with the headers names a session that exists.
        session[STATE_KEY] = conv.state()

    def text() -> Iterator[str]:
        # conv: a browser's next turn comes seconds later, maybe to another worker, so no
        # connection is held for it (the with block ends the conversation's hold).
        with conv, stream:
            failure = yield from _deltas(stream)
            # Saved only once the terminal event was read: a turn cut short (the browser hung
            # up, the connection broke) leaves the previous state, and the next turn goes on
            # from there. The middleware is done by now, so the session is saved here. Two
            # turns of one browser at once both continue from the same state, and the later
            # save wins (the other exchange drops out of the context).
            if stream.response is not None:
                session[STATE_KEY] = conv.state()
                session.save()
            elif isinstance(failure, oaiws.PreviousResponseNotFoundError):
                # The server no longer has the chain (deleted, or past its retention): the
                # chat starts again rather than failing on every later message.
                session.pop(STATE_KEY, None)
                session.save()
                yield "[this conversation has expired: your next message starts a new one]\n"

    return StreamingHttpResponse(text(), content_type="text/plain; charset=utf-8")


@require_GET
def stats(request: HttpRequest) -> HttpResponse:
    return JsonResponse(client.pool_stats())


def worker_pid(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[..., Any]:
    """Middleware: shows which worker process answered (turns of one chat spread across
    workers)."""

    def middleware(request: HttpRequest) -> HttpResponse:
        response = get_response(request)
        response["X-Worker-Pid"] = str(os.getpid())
        return response

    return middleware


def _error(status: int, message: str) -> HttpResponse:
    return JsonResponse({"error": message}, status=status)


urlpatterns = [path("ask", ask), path("chat", chat), path("stats", stats)]
