"""examples/flask_app.py works: its view streams through the module-level client.

Flask is not a dependency of oaiws; this runs where Flask happens to be installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flask_app.py"


def _load(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> ModuleType:
    pytest.importorskip("flask")
    monkeypatch.setenv("OPENAI_BASE_URL", emulator.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", emulator.api_key)
    spec = importlib.util.spec_from_file_location("flask_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_view_streams_the_text(monkeypatch: pytest.MonkeyPatch, oaiws_emulator: Any) -> None:
    example = _load(monkeypatch, oaiws_emulator)
    try:
        web = example.app.test_client()
        first = web.post("/ask", json={"prompt": "Hello"})
        second = web.post("/ask", json={"prompt": "Again"})
        assert first.status_code == 200 and second.status_code == 200
        assert first.get_data(as_text=True) and second.get_data(as_text=True)
        assert oaiws_emulator.stats()["handshakes"] == 1  # the module-level pool was reused
        assert web.get("/stats").status_code == 200
        bad = web.post("/ask", json={})
        assert bad.status_code == 400 and "input" in bad.get_json()["error"]
    finally:
        example.client.close()
