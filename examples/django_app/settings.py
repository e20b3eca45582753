"""Settings of the Django example (see wsgi.py): no database, sessions kept in files.

``OAIWS_SESSION_DIR`` is the directory of the session files (default
``oaiws-django-sessions`` in the temp directory, created at start); every worker process must
see the same one, since any of them may serve a browser's next turn. ``DJANGO_SECRET_KEY``
signs the session data; by default one is generated once and kept in that directory, so that
workers not forked from one master (no ``--preload``) still agree on it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path


def _session_dir() -> Path:
    given = os.environ.get("OAIWS_SESSION_DIR")
    if given:  # the deployment's choice: its permissions are the deployment's too
        path = Path(given)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path
    user = os.getuid() if hasattr(os, "getuid") else 0
    path = Path(tempfile.gettempdir()) / f"oaiws-django-sessions-{user}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.stat()
    if hasattr(os, "getuid") and (info.st_uid != user or info.st_mode & 0o077):
        # In a shared temp directory someone else may have made it (or opened it up): they
        # could read the chats or plant a session secret they know.
        raise RuntimeError(
            f"{path} is not private to this user: remove it or set OAIWS_SESSION_DIR"
        )
    return path


def _shared_secret(directory: Path) -> str:
    """The secret kept in ``directory``: the first process to get there writes it."""
    path = directory / "secret-key"
    if not path.exists():
        candidate = directory / f"secret-key.{os.getpid()}"
        with os.fdopen(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(secrets.token_urlsafe(50))
        # os.link fails when the name exists: exactly one process's key wins the race, and
        # nobody ever reads a half-written file.
        with contextlib.suppress(FileExistsError):
            os.link(candidate, path)
        candidate.unlink()
    return path.read_text(encoding="ascii")


SESSION_FILE_PATH = str(_session_dir())
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or _shared_secret(Path(SESSION_FILE_PATH))

DEBUG = False
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
ROOT_URLCONF = "views"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}  # nothing to migrate: sessions are files

# Server-side sessions without a database: the cookie holds only the session's key; the data
# (here, the conversation's state) is a file every worker reads.
SESSION_ENGINE = "django.contrib.sessions.backends.file"

MIDDLEWARE = [
    # No CsrfViewMiddleware: the views read only application/json bodies, which a cross-site
    # form cannot send, and the session cookie is SameSite=Lax (Django's default).
    "django.contrib.sessions.middleware.SessionMiddleware",
    "views.worker_pid",
]

USE_TZ = True
