"""ClientConfig: environment, URL derivation, validation before any I/O, secrets kept out."""

from __future__ import annotations

from pathlib import Path

import pytest

from oaiws import ConfigurationError
from oaiws._config import ClientConfig, websocket_url_from_base

ENV = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "OPENAI_WEBSOCKET_BASE_URL",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://api.openai.com/v1", "wss://api.openai.com/v1/responses"),
        ("https://api.openai.com/v1/", "wss://api.openai.com/v1/responses"),
        ("http://127.0.0.1:8080/v1", "ws://127.0.0.1:8080/v1/responses"),
        ("https://gw.example/v1?model=gpt-5", "wss://gw.example/v1/responses?model=gpt-5"),
        (
            "https://res.openai.azure.com/openai/v1",
            "wss://res.openai.azure.com/openai/v1/responses",
        ),
    ],
)
def test_websocket_url_is_derived_from_the_base_url(base: str, expected: str) -> None:
    assert websocket_url_from_base(base) == expected
    assert ClientConfig.resolve(base_url=base).websocket_url == expected


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ClientConfig.resolve()
    assert config.websocket_url == "wss://api.openai.com/v1/responses"
    assert (config.max_connections, config.min_connections, config.max_retries) == (10, 0, 2)
    assert config.read_timeout >= 300
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:9/v1")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-1")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-1")
    config = ClientConfig.resolve()
    assert config.api_key == "sk-env"
    assert config.websocket_url == "ws://localhost:9/v1/responses"
    headers = config.handshake_headers()
    assert headers["Authorization"] == "Bearer sk-env"
    assert headers["OpenAI-Organization"] == "org-1"
    assert headers["OpenAI-Project"] == "proj-1"
    assert headers["User-Agent"].startswith("oaiws/")
    assert ClientConfig.resolve(api_key="sk-arg").api_key == "sk-arg", "arguments win"


def test_websocket_url_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_WEBSOCKET_BASE_URL", "wss://edge.example/v1")
    assert ClientConfig.resolve().websocket_url == "wss://edge.example/v1/responses"
    config = ClientConfig.resolve(websocket_url="ws://127.0.0.1:1/custom")
    assert config.websocket_url == "ws://127.0.0.1:1/custom"
    with pytest.raises(ConfigurationError, match="wss://"):
        ClientConfig.resolve(websocket_url="https://x.example/v1/responses")


def test_missing_key_fails_at_first_use_not_at_construction() -> None:
    config = ClientConfig.resolve()
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        config.require_api_key()
    with pytest.raises(ConfigurationError):
        config.handshake_headers()


def test_azure_api_key_header_is_the_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-must-not-travel")
    config = ClientConfig.resolve(
        base_url="https://res.openai.azure.com/openai/v1", default_headers={"api-key": "az-key"}
    )
    config.require_api_key()
    headers = config.handshake_headers()
    assert headers["api-key"] == "az-key"
    assert "Authorization" not in headers, "the environment's key is not sent to Azure"


def test_default_headers_override_case_insensitively() -> None:
    config = ClientConfig.resolve(api_key="sk-a", default_headers={"user-agent": "mine/1"})
    headers = config.handshake_headers()
    assert headers["user-agent"] == "mine/1"
    assert "User-Agent" not in headers


@pytest.mark.parametrize(
    "options",
    [
        {"max_connections": 0},
        {"max_connections": 2, "min_connections": 3},
        {"min_connections": -1},
        {"pool_timeout": 0},
        {"connect_timeout": float("nan")},
        {"read_timeout": -1},
        {"read_timeout": True},
        {"max_connection_age": float("inf")},
        {"connection_age_margin": -1},
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"verify": "/no/such/ca.pem"},
        {"verify": 1},
        {"base_url": "ftp://x.example/v1"},
        {"base_url": "https://user:pw@x.example/v1"},
        {"base_url": ""},
        {"api_key": ""},
        {"api_key": "sk-a\r\nX-Injected: 1"},
        {"default_headers": {"X-A": "1\r\nX-B: 2"}},
        {"default_headers": {"Bad:Name": "1"}},
        {"organization": "org\n"},
        {"proxy": "ftp://proxy:21"},
        {"idle_timeout": 0},
    ],
)
def test_invalid_options_fail_fast(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        ClientConfig.resolve(**options)  # type: ignore[arg-type]


def test_verify_accepts_a_ca_bundle_path(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    assert ClientConfig.resolve(verify=str(bundle)).verify == str(bundle)
    assert ClientConfig.resolve(verify=False).verify is False


def test_proxy_is_parsed_and_its_password_hidden() -> None:
    config = ClientConfig.resolve(proxy="http://user:hunter2@proxy.local:3128")
    assert config.proxy is not None
    assert (config.proxy.host, config.proxy.port, config.proxy.username) == (
        "proxy.local",
        3128,
        "user",
    )
    assert "hunter2" not in repr(config)
    assert ClientConfig.resolve(proxy="proxy.local:8080").proxy is not None


def test_repr_never_shows_secrets() -> None:
    config = ClientConfig.resolve(
        api_key="sk-very-secret",
        default_headers={"api-key": "az-secret", "X-Trace": "visible"},
        websocket_url="wss://gw.example/v1/responses?token=query-secret",
    )
    text = repr(config)
    for secret in ("sk-very-secret", "az-secret", "query-secret"):
        assert secret not in text
    assert "visible" in text


def test_age_margin_is_clamped_for_short_ages() -> None:
    assert ClientConfig.resolve().effective_age_margin == 300.0
    assert ClientConfig.resolve(max_connection_age=780.0).effective_age_margin == 195.0
    assert ClientConfig.resolve(max_connection_age=4.0).effective_age_margin == 1.0


@pytest.mark.parametrize(
    ("base_url", "age"),
    [
        ("https://api.x.ai/v1", 1500.0),
        ("https://ai-gateway.vercel.sh/v1", 780.0),
        ("https://api.openai.com/v1", 3600.0),
        ("https://my-resource.openai.azure.com/openai/v1", 3600.0),
        ("http://127.0.0.1:8765/v1", 3600.0),
    ],
)
def test_known_endpoints_get_their_documented_connection_lifetime(
    base_url: str, age: float
) -> None:
    config = ClientConfig.resolve(api_key="sk-x", base_url=base_url)
    assert config.max_connection_age == age
    assert config.effective_age_margin <= age * 0.25  # rotation still comes well before the limit


def test_a_given_connection_lifetime_wins_over_the_known_one() -> None:
    config = ClientConfig.resolve(
        api_key="sk-x", base_url="https://api.x.ai/v1", max_connection_age=600
    )
    assert config.max_connection_age == 600.0
