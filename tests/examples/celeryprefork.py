"""Imported by the test's Celery worker (``--include``) in its parent process, before the
prefork pool forks: it uses the example's client there, so every child inherits a pool that
holds an open WebSocket connection. A child that used that socket would share it with its
parent and its sibling; oaiws must give each child a fresh pool instead."""

from __future__ import annotations

from celery_app import MODEL, client

client.create_response(model=MODEL, input="warm-up in the worker's parent")
assert client.pool_stats()["connections_open"] == 1
