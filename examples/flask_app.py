"""A Flask view that streams a response from one module-level ``oaiws.Client``.

One client per process, shared by every request thread: its pool keeps a few warm WebSocket
connections, so a request pays no handshake. Run it against the embedded emulator::

    oaiws emulator --port 8765 &
    OPENAI_BASE_URL=http://127.0.0.1:8765/v1 OPENAI_API_KEY=sk-test \\
        flask --app examples/flask_app.py run --with-threads

    curl -N -X POST localhost:5000/ask -H 'content-type: application/json' \\
        -d '{"prompt": "Tell me about pools"}'

Against the real API, set only ``OPENAI_API_KEY`` (and ``OAIWS_MODEL`` if you like).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator

from flask import Flask, Response, jsonify, request

import oaiws

MODEL = os.environ.get("OAIWS_MODEL", "gpt-5.5")

# Built at import time: no network until the first request, and a missing key is reported
# then, not here.
client = oaiws.Client(max_connections=8, pool_timeout=10.0)
atexit.register(client.close)

app = Flask(__name__)


@app.post("/ask")
def ask() -> Response:
    body = request.get_json(silent=True) or {}
    prompt = body.get("prompt")
    try:
        # Validation happens here, before anything is sent, so a bad request is still a 400.
        stream = client.generate_response(model=MODEL, input=prompt, timeout=120.0)
    except oaiws.ConfigurationError as error:
        return _error(400, str(error))

    def text() -> Iterator[str]:
        # When the browser goes away, Flask closes this generator; leaving the with block
        # closes the WebSocket, which stops the server generating (and billing) the rest.
        with stream:
            try:
                for event in stream:
                    if event.type == "response.output_text.delta":
                        yield event.delta
            except oaiws.APIError as error:
                # The status line is already sent: say so in the body, where a reader sees it.
                yield f"\n[error: {type(error).__name__}]\n"

    # The generator needs nothing from the request context: everything it uses is bound here.
    return Response(text(), mimetype="text/plain; charset=utf-8")


@app.get("/stats")
def stats() -> Response:
    return jsonify(client.pool_stats())


def _error(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response
