"""A Celery task that asks the model through one module-level ``oaiws.Client`` per worker process.

The client is built when the module is imported, before the prefork pool forks: it opens no
connection until the first task, and each worker child gets a fresh pool of its own after the
fork (nothing to configure). A 429 is not retried by the client (``max_retries=0``) but by
Celery, which puts the task back on the queue for ``retry_after`` seconds instead of holding a
worker process asleep. Run it against the embedded emulator, in two terminals::

    oaiws emulator --port 8765

    cd examples && OPENAI_BASE_URL=http://127.0.0.1:8765/v1 OPENAI_API_KEY=sk-test \\
        celery -A celery_app worker --loglevel=INFO

Then call the task from any shell in ``examples/`` (with the worker's ``OAIWS_CELERY_DIR``,
if you set one)::

    python -c 'from celery_app import ask; print(ask.delay("Tell me about pools").get(timeout=60))'

Without ``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` the broker and the results are
plain files under ``OAIWS_CELERY_DIR`` (default: ``oaiws-celery`` in the system temp dir), so
no server is needed; set them (e.g. ``redis://localhost:6379/0``) for anything real. Against
the real API, set only ``OPENAI_API_KEY`` (and ``OAIWS_MODEL`` if you like).
"""

from __future__ import annotations

import atexit
import os
import random
import tempfile
from typing import Any

from celery import Celery, Task

import oaiws

MODEL = os.environ.get("OAIWS_MODEL", "gpt-5.5")

# Celery's retry budget for rate limits, and the pause when the server names none (seconds,
# doubled per retry). A retry_after beyond MAX_COUNTDOWN is cut to it: a worker holds a
# delayed task in memory until it is due, and some brokers redeliver what stays unacked long.
MAX_RETRIES = 5
BACKOFF = 1.0
MAX_COUNTDOWN = 60.0

# Built at import time, in the worker's parent process: no network until the first task, and a
# missing key is reported then, not here. max_retries=0 hands every 429 to Celery at once.
client = oaiws.Client(max_retries=0)
atexit.register(client.close)


def _celery_config() -> dict[str, Any]:
    broker = os.environ.get("CELERY_BROKER_URL")
    backend = os.environ.get("CELERY_RESULT_BACKEND")
    # Celery 5's behaviour, stated: otherwise the worker warns that Celery 6 will want it set.
    config: dict[str, Any] = {"broker_connection_retry_on_startup": True}
    if broker is None or backend is None:
        base = os.environ.get("OAIWS_CELERY_DIR") or os.path.join(
            tempfile.gettempdir(), "oaiws-celery"
        )
        messages = os.path.join(base, "broker")
        control = os.path.join(base, "control")
        results = os.path.join(base, "results")
        # The file transport and the file backend need their folders to exist.
        for folder in (messages, control, results):
            os.makedirs(folder, exist_ok=True)
        if broker is None:
            # The transport ignores the host; naming one spares Kombu's warning that none was.
            broker = "filesystem://localhost/"
            config["broker_transport_options"] = {
                # One folder for both directions: senders write where the worker reads.
                "data_folder_in": messages,
                "data_folder_out": messages,
                "control_folder": control,
                # The folder is polled; Kombu's default of a second would delay every task.
                "polling_interval": 0.1,
            }
        if backend is None:
            backend = "file://" + results
    config["broker_url"] = broker
    config["result_backend"] = backend
    return config


app = Celery("celery_app")
app.conf.update(_celery_config())


@app.task(bind=True, max_retries=MAX_RETRIES)
def ask(self: Task, prompt: str) -> str:
    """The model's answer to ``prompt``. What the client would have retried itself (a 429, a
    5xx, a lost connection or a timeout) is retried by Celery; anything else fails the task."""
    try:
        response = client.create_response(model=MODEL, input=prompt, timeout=120.0)
    except oaiws.RateLimitError as error:
        if error.code == "insufficient_quota":
            raise  # no pause refills a quota: retrying would only spend the budget
        raise self.retry(exc=error, countdown=_countdown(error, self.request.retries)) from error
    except (oaiws.InternalServerError, oaiws.APIConnectionError) as error:
        # max_retries=0 turned the client's own retries off for these too.
        raise self.retry(exc=error, countdown=_countdown(error, self.request.retries)) from error
    return response.output_text


def _countdown(error: oaiws.APIError, retries: int) -> float:
    if isinstance(error, oaiws.APIStatusError) and error.retry_after is not None:
        return min(error.retry_after, MAX_COUNTDOWN)
    # Jittered downwards, so that tasks limited together do not all come back together.
    return min(BACKOFF * 2**retries, MAX_COUNTDOWN) * random.uniform(0.75, 1.0)
