"""A Django project that streams answers from one module-level ``oaiws.Client`` per process.

Endpoints (in views.py):

- ``POST /ask`` ``{"prompt": "..."}``: the answer as ``text/plain``, token by token. A browser
  that hangs up closes the upstream WebSocket, which stops the server generating the rest
  (noticed at the next text chunk that cannot be written).
- ``POST /chat`` ``{"message": "..."}``: the next turn of this browser's conversation, streamed
  the same way. Its state (``conv.state()``, plain JSON) is kept in the Django session, whose
  file backend keeps the data on the server and only the session's key in the cookie, so any
  worker can serve any turn.
- ``GET /stats``: ``client.pool_stats()`` of the worker that answers (see ``X-Worker-Pid``).

Run it against the embedded emulator, in two terminals::

    oaiws emulator --port 8765 --delta-delay 0.05
    OPENAI_BASE_URL=http://127.0.0.1:8765/v1 OPENAI_API_KEY=sk-test \\
        gunicorn -k gthread -w 2 --threads 4 --preload --chdir examples/django_app wsgi:application

then ``curl -N localhost:8000/ask -H 'content-type: application/json' -d '{"prompt": "Hi"}'``,
or ``curl -N -b jar -c jar localhost:8000/chat -H 'content-type: application/json' -d
'{"message": "Hi"}'`` a few times (the cookie jar keeps the conversation).

Environment: ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` (read by ``oaiws.Client``),
``OAIWS_MODEL`` (default ``gpt-5.5``), ``OAIWS_STORE`` (``true``/``false``, default ``true``),
and those of settings.py (``OAIWS_SESSION_DIR``, ``DJANGO_SECRET_KEY``,
``DJANGO_ALLOWED_HOSTS``). No database, no migrations, no manage.py.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

application = get_wsgi_application()

# Django would import the URLconf at the first request, in each worker. Imported now, the
# module-level client is built once, in gunicorn's master with --preload (each forked worker
# then gets a fresh pool of its own), and an error in views.py stops the server at start.
import views  # noqa: E402, F401
