"""The public Client: options, validation before any traffic, TLS, threads, secrets."""

from __future__ import annotations

import inspect
import logging
import threading
from typing import Any

import pytest

import oaiws
from oaiws._config import ClientConfig


def test_client_options_mirror_the_config() -> None:
    client_params = inspect.signature(oaiws.Client).parameters
    config_params = inspect.signature(ClientConfig.resolve).parameters
    assert list(client_params) == list(config_params)
    for name, param in config_params.items():
        assert client_params[name].default == param.default, name


@pytest.mark.parametrize(
    "fields",
    [
        {"model": "gpt-5.5", "input": 3},
        {"input": "x"},
        {"model": "gpt-5.5", "input": "x", "stream": True},
        {"model": "gpt-5.5", "input": "x", "background": True},
        {"model": "gpt-5.5", "input": "x", "previous_response_id": 12},
        {"model": "gpt-5.5", "input": "x", "timeout": -1},
        {"model": "gpt-5.5", "input": "x", "timeout": True},
    ],
)
def test_validation_happens_before_any_handshake(
    oaiws_emulator: Any, client_for: Any, fields: dict[str, Any]
) -> None:
    client = client_for(oaiws_emulator)
    with pytest.raises(oaiws.ConfigurationError):
        client.generate_response(**fields)
    with pytest.raises(oaiws.ConfigurationError):
        client.create_response(**fields)
    assert oaiws_emulator.stats()["handshakes"] == 0
    assert oaiws_emulator.stats()["refused_upgrades"] == 0


def test_missing_key_fails_before_any_handshake(
    oaiws_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    client = oaiws.Client(base_url=oaiws_emulator.base_url)
    with pytest.raises(oaiws.ConfigurationError, match="OPENAI_API_KEY"):
        client.create_response(model="gpt-5.5", input="x")
    client.close()
    assert oaiws_emulator.stats()["handshakes"] == 0


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(oaiws.ConfigurationError):
        oaiws.Client(api_key="sk-x", max_connections=0)


def test_repr_never_shows_the_key(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, api_key="sk-very-secret-key")
    assert "sk-very-secret-key" not in repr(client)
    assert "sk-very-secret-key" not in repr(client.config)
    assert "open" in repr(client)
    stream = client.generate_response(model="gpt-5.5", input="x")
    assert "sk-very-secret-key" not in repr(stream)
    stream.close()


def test_logs_carry_no_content(
    oaiws_emulator: Any, client_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="oaiws")
    client = client_for(oaiws_emulator)
    response = client.create_response(model="gpt-5.5", input="PRIVATE-INPUT-TEXT")
    for event in client.generate_response(model="gpt-5.5", input="PRIVATE-INPUT-TEXT"):
        break
    assert "PRIVATE-INPUT-TEXT" not in caplog.text
    assert response.output_text[:20] not in caplog.text
    assert oaiws_emulator.api_key not in caplog.text


def test_tls_end_to_end(oaiws_emulator_factory: Any, client_for: Any) -> None:
    emulator = oaiws_emulator_factory(tls=True)
    assert emulator.base_url.startswith("https://")
    client = client_for(emulator, verify=emulator.ca_path)
    assert client.create_response(model="gpt-5.5", input="secure").status == "completed"
    untrusting = client_for(emulator, max_retries=0)  # the system store lacks the test CA
    with pytest.raises(oaiws.APIConnectionError):
        untrusting.create_response(model="gpt-5.5", input="x")


def test_threads_share_a_small_pool(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, max_connections=2)
    failures: list[BaseException] = []
    texts: list[str] = []
    lock = threading.Lock()

    def work(number: int) -> None:
        try:
            for turn in range(5):
                with client.generate_response(model="gpt-5.5", input=f"{number}/{turn}") as s:
                    text = "".join(e.delta for e in s if e.type == "response.output_text.delta")
                assert s.response is not None and s.response.output_text == text
                with lock:
                    texts.append(text)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(texts) == 30
    stats = oaiws_emulator.stats()
    assert stats["requests"] == 30
    assert stats["handshakes"] <= 2


def test_closed_client_refuses_requests(oaiws_emulator: Any) -> None:
    client = oaiws.Client(api_key=oaiws_emulator.api_key, base_url=oaiws_emulator.base_url)
    assert client.create_response(model="gpt-5.5", input="x").status == "completed"
    client.close()
    client.close()  # idempotent
    assert client.closed and "closed" in repr(client)
    with pytest.raises(oaiws.ClientClosedError, match="closed"):
        client.generate_response(model="gpt-5.5", input="x")


def test_client_as_context_manager(oaiws_emulator: Any) -> None:
    with oaiws.Client(api_key=oaiws_emulator.api_key, base_url=oaiws_emulator.base_url) as c:
        assert c.create_response(model="gpt-5.5", input="x").output_text
    assert c.closed


def test_pool_stats_count_handshakes_and_requests(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, max_connections=1)
    for _ in range(3):
        client.create_response(model="gpt-5.5", input="x")
    stats = client.pool_stats()
    assert (stats["connections_opened"], stats["checkouts"], stats["reuses"]) == (1, 3, 2)
    assert stats["retries"] == 0
