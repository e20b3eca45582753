"""examples/flask_app.py works: its view streams through the module-level client.

Flask is not a dependency of oaiws; this runs where Flask happens to be installed.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import oaiws

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flask_app.py"


@pytest.fixture
def example(
    monkeypatch: pytest.MonkeyPatch, oaiws_emulator: Any, tmp_path: Path
) -> Iterator[ModuleType]:
    """The example, loaded against the emulator; its client closed at teardown."""
    pytest.importorskip("flask")
    monkeypatch.setenv("OAIWS_CHAT_DB", str(tmp_path / "chats.sqlite3"))  # not the real temp dir
    monkeypatch.setenv("OPENAI_BASE_URL", oaiws_emulator.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", oaiws_emulator.api_key)
    spec = importlib.util.spec_from_file_location("flask_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    module.client.close()  # the one in use by then: a test may swap it


def test_view_streams_the_text(example: ModuleType, oaiws_emulator: Any) -> None:
    web = example.app.test_client()
    for prompt in ("Hello", "Again"):
        answer = web.post("/ask", json={"prompt": prompt})
        assert answer.status_code == 200
        assert answer.mimetype == "text/plain"
        assert len(answer.get_data(as_text=True).split()) >= 3
    assert oaiws_emulator.stats()["handshakes"] == 1  # the module-level pool was reused
    assert web.get("/stats").status_code == 200
    bad = web.post("/ask", json={})
    assert bad.status_code == 400 and "input" in bad.get_json()["error"]


def test_a_reader_leaving_early_closes_the_connection(example: ModuleType) -> None:
    web = example.app.test_client()
    answer = web.post("/ask", json={"prompt": "Hello"}, buffered=False)
    chunks = iter(answer.response)
    assert next(chunks)
    answer.close()  # what the server does when the browser goes away
    stats = example.client.pool_stats()
    assert stats["connections_discarded"] == 1 and stats["connections_open"] == 0


def test_a_chat_the_server_no_longer_has_starts_again(
    example: ModuleType, oaiws_emulator: Any, tmp_path: Path
) -> None:
    web = example.app.test_client()
    first = web.post("/chat", json={"message": "my name is Bob"})
    assert first.status_code == 200 and first.get_data(as_text=True)  # read: then saved
    (state_text,) = (
        sqlite3.connect(tmp_path / "chats.sqlite3").execute("SELECT state FROM chats").fetchone()
    )
    # Past its retention, or deleted: the chain is gone from the server...
    example.client.responses.delete(json.loads(state_text)["last_response_id"])
    # ...and the next turn goes to another worker, whose connections never held it.
    example.client.close()
    example.client = oaiws.Client(api_key=oaiws_emulator.api_key, base_url=oaiws_emulator.base_url)
    expired = web.post("/chat", json={"message": "what is my name?"})
    assert "this conversation has expired" in expired.get_data(as_text=True)
    rows = sqlite3.connect(tmp_path / "chats.sqlite3").execute("SELECT COUNT(*) FROM chats")
    assert rows.fetchone() == (0,)  # forgotten, not stuck
    again = web.post("/chat", json={"message": "hello again"})
    assert again.status_code == 200 and "error" not in again.get_data(as_text=True)
