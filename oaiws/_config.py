"""Every ``Client`` option, resolved from arguments and the environment and validated once.

``ClientConfig.resolve(**client_kwargs)`` is the only constructor the rest of the package
uses. It never performs I/O and raises ``ConfigurationError`` for any invalid value, so bad
input fails before anything is sent. A missing API key is the one deferred error: a client
may be built at import time (a Django settings module, a Celery worker) before the
environment is complete, so ``require_api_key()`` raises at first use instead.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Optional, Union
from urllib.parse import SplitResult, urlsplit, urlunsplit

from ._version import __version__
from .errors import ConfigurationError

__all__ = [
    "DEFAULT_BASE_URL",
    "TRANSPORTS",
    "ClientConfig",
    "ProxySettings",
    "display_url",
    "websocket_url_from_base",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"

# Header names whose values are credentials: never shown by repr, and their presence in
# ``default_headers`` means the caller authenticates by header (Azure's ``api-key``).
_CREDENTIAL_HEADERS = frozenset({"authorization", "api-key"})
_SECRET_HEADERS = _CREDENTIAL_HEADERS | {"cookie", "proxy-authorization"}

# The protocol gives the WebSocket the same path as the HTTP create endpoint.
_RESPONSES_PATH = "/responses"

# How requests reach the server (see _transport).
TRANSPORTS = ("auto", "websocket", "http")

# A message below this could not even hold a finished response of a few words.
_MIN_MESSAGE_SIZE = 4096

_WS_SCHEME_FOR = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}
_PROXY_SCHEMES = frozenset({"http", "socks4", "socks4a", "socks5", "socks5h"})
_DEFAULT_PROXY_PORT = {
    "http": 8080,
    "socks4": 1080,
    "socks4a": 1080,
    "socks5": 1080,
    "socks5h": 1080,
}


def _user_agent() -> str:
    return (
        f"oaiws/{__version__} python/{platform.python_version()} "
        f"({sys.platform}; {platform.machine() or 'unknown'})"
    )


# Connection lifetimes that endpoints document, by host: used when max_connection_age is not
# given. OpenAI (and anything unknown): one hour.
DEFAULT_CONNECTION_AGE = 3600.0
KNOWN_CONNECTION_AGES = {
    "api.x.ai": 25 * 60.0,  # xAI: 25 minutes
    "ai-gateway.vercel.sh": 13 * 60.0,  # Vercel AI Gateway: about 13 minutes
}


def known_connection_age(base_url: str) -> float:
    """The documented connection lifetime of the endpoint at ``base_url``."""
    host = (urlsplit(base_url).hostname or "").lower()
    return KNOWN_CONNECTION_AGES.get(host, DEFAULT_CONNECTION_AGE)


def websocket_url_from_base(base_url: str) -> str:
    """Derive the WebSocket URL from an HTTP base URL (PROTOCOL.md section 1).

    ``https://host/v1`` -> ``wss://host/v1/responses``, ``http://`` -> ``ws://``; the query
    string is kept because some gateways need ``?model=`` or ``?api-version=`` on it.
    """
    parts = _split(base_url, "base_url")
    scheme = _WS_SCHEME_FOR.get(parts.scheme.lower())
    if scheme is None:
        raise ConfigurationError(
            f"base_url must start with https:// or http:// (got scheme {parts.scheme!r})"
        )
    path = parts.path.rstrip("/") + _RESPONSES_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _split(url: str, name: str) -> SplitResult:
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{name} must be a non-empty URL string")
    if any(ch.isspace() for ch in url.strip()):
        raise ConfigurationError(f"{name} must not contain whitespace")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - parsing the port is the validation
    except ValueError as exc:
        raise ConfigurationError(f"{name} is not a valid URL: {exc}") from None
    if not parts.hostname:
        raise ConfigurationError(f"{name} has no host")
    if parts.username is not None or parts.password is not None:
        # Credentials in a URL end up in logs and proxies; the API key goes in a header.
        raise ConfigurationError(f"{name} must not contain user:password credentials")
    return parts


@dataclass(frozen=True)
class ProxySettings:
    """An HTTP (or SOCKS) proxy for the WebSocket's TCP connection."""

    scheme: str
    host: str
    port: int
    username: Optional[str] = field(default=None)
    password: Optional[str] = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> ProxySettings:
        if "://" not in url:
            url = "http://" + url  # curl and requests accept a bare host:port
        parts = _split_proxy(url)
        scheme = parts.scheme.lower()
        if scheme == "https":
            # websocket-client speaks plain HTTP CONNECT to the proxy; the tunnel inside is
            # still TLS for wss:// URLs.
            scheme = "http"
        if scheme not in _PROXY_SCHEMES:
            raise ConfigurationError(
                f"proxy scheme {parts.scheme!r} is not supported (use http://host:port)"
            )
        assert parts.hostname is not None
        return cls(
            scheme=scheme,
            host=parts.hostname,
            port=parts.port or _DEFAULT_PROXY_PORT[scheme],
            username=parts.username or None,
            password=parts.password or None,
        )

    def display(self) -> str:
        """The proxy without its password, for reprs and messages."""
        user = f"{self.username}:***@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}"


def _split_proxy(url: str) -> SplitResult:
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - parsing the port is the validation
    except ValueError as exc:
        raise ConfigurationError(f"proxy is not a valid URL: {exc}") from None
    if not parts.hostname:
        raise ConfigurationError("proxy has no host")
    return parts


def _env(name: str) -> Optional[str]:
    value = os.environ.get(name)
    return value.strip() if value and value.strip() else None


def _optional_seconds(name: str, value: object) -> Optional[float]:
    return None if value is None else _seconds(name, value)


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds (got {value!r})")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ConfigurationError(
            f"{name} must be a positive, finite number of seconds (got {value!r})"
        )
    return number


def _count(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer (got {value!r})")
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum} (got {value})")
    return value


def _check_header(name: object, value: object) -> tuple[str, str]:
    if not isinstance(name, str) or not isinstance(value, str):
        raise ConfigurationError("default_headers must map header names (str) to values (str)")
    if not name or any(ch in name for ch in "\r\n:") or name != name.strip():
        raise ConfigurationError(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value:
        # A newline would let a value inject further headers into the upgrade request.
        raise ConfigurationError(f"the value of header {name!r} contains a line break")
    return name, value


# eq=False: identity semantics, so a config can key caches (its header mapping is unhashable).
@dataclass(frozen=True, repr=False, eq=False)
class ClientConfig:
    """The resolved, validated options of one ``Client``. Build it with ``resolve``."""

    api_key: Optional[str]
    base_url: str
    websocket_url: str
    organization: Optional[str]
    project: Optional[str]
    default_headers: Mapping[str, str]
    max_connections: int
    min_connections: int
    pool_timeout: float
    connect_timeout: float
    read_timeout: float
    max_connection_age: float
    connection_age_margin: float
    idle_timeout: Optional[float]
    ping_interval: Optional[float]
    max_retries: int
    verify: Union[bool, str]
    proxy: Optional[ProxySettings]
    # Seconds a conversation's connection is kept for its next turn (0: never); see _pool.
    affinity_wait: float = 1.0
    # The largest message accepted from the server, in bytes; see _frames.
    max_message_size: int = 64 * 1024 * 1024
    # "auto" (WebSocket, falling back to HTTP), "websocket" or "http"; see _transport.
    transport: str = "auto"
    # Many responses per connection in named lanes (stream_id); see _lanepool.
    lanes: bool = False

    @classmethod
    def resolve(
        cls,
        *,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        websocket_url: Optional[str] = None,
        organization: Optional[str] = None,
        project: Optional[str] = None,
        default_headers: Optional[Mapping[str, str]] = None,
        max_connections: int = 10,
        min_connections: int = 0,
        pool_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        max_connection_age: Optional[float] = None,
        connection_age_margin: float = 300.0,
        idle_timeout: Optional[float] = 300.0,
        ping_interval: Optional[float] = 20.0,
        max_retries: int = 2,
        verify: Union[bool, str] = True,
        proxy: Optional[str] = None,
        affinity_wait: float = 1.0,
        max_message_size: int = 64 * 1024 * 1024,
        transport: str = "auto",
        lanes: bool = False,
    ) -> ClientConfig:
        """Resolve arguments against the environment and validate every value.

        Precedence: an argument wins over its environment variable
        (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID``).
        The WebSocket URL is ``websocket_url`` as given (a full URL), else
        ``OPENAI_WEBSOCKET_BASE_URL`` + ``/responses``, else derived from the base URL.
        ``proxy=None`` leaves proxy discovery to ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``
        at connect time.
        """
        headers: dict[str, str] = {}
        if default_headers is not None:
            if not isinstance(default_headers, Mapping):
                raise ConfigurationError(
                    "default_headers must be a mapping of header names to values"
                )
            for raw_name, raw_value in default_headers.items():
                name, value = _check_header(raw_name, raw_value)
                headers[name] = value
        header_auth = any(name.lower() in _CREDENTIAL_HEADERS for name in headers)

        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise ConfigurationError("api_key must be a non-empty string")
        if api_key is None and not header_auth:
            # With an explicit credential header (Azure's api-key), the environment's key is
            # left alone: it may belong to another provider and must not travel there.
            api_key = _env("OPENAI_API_KEY")
        if api_key is not None and any(ch in api_key for ch in "\r\n"):
            raise ConfigurationError("api_key contains a line break")
        if api_key is not None:
            api_key = api_key.strip()

        resolved_base = (
            base_url if base_url is not None else (_env("OPENAI_BASE_URL") or DEFAULT_BASE_URL)
        )
        derived = websocket_url_from_base(resolved_base)  # validates the base URL too
        if websocket_url is not None:
            resolved_ws = _check_websocket_url(websocket_url, "websocket_url")
        else:
            env_base = _env("OPENAI_WEBSOCKET_BASE_URL")
            resolved_ws = derived if env_base is None else websocket_url_from_base(env_base)

        organization = organization if organization is not None else _env("OPENAI_ORG_ID")
        project = project if project is not None else _env("OPENAI_PROJECT_ID")
        for header_name, header_value in (("organization", organization), ("project", project)):
            if header_value is not None:
                _check_header(header_name, header_value)

        max_connections = _count("max_connections", max_connections, minimum=1)
        min_connections = _count("min_connections", min_connections, minimum=0)
        if min_connections > max_connections:
            raise ConfigurationError(
                f"min_connections ({min_connections}) must not exceed "
                f"max_connections ({max_connections})"
            )
        max_retries = _count("max_retries", max_retries, minimum=0)
        max_message_size = _count("max_message_size", max_message_size, minimum=_MIN_MESSAGE_SIZE)
        if not isinstance(lanes, bool):
            raise ConfigurationError(f"lanes must be True or False (got {lanes!r})")
        if lanes and transport == "http":
            raise ConfigurationError(
                "lanes=True needs WebSocket mode: use transport='auto' or 'websocket'"
            )
        if transport not in TRANSPORTS:
            raise ConfigurationError(
                f"transport must be one of {', '.join(map(repr, TRANSPORTS))} (got {transport!r})"
            )
        if (
            isinstance(affinity_wait, bool)
            or not isinstance(affinity_wait, (int, float))
            or not math.isfinite(affinity_wait)
            or affinity_wait < 0
        ):
            raise ConfigurationError(
                "affinity_wait must be zero or a positive number of seconds "
                f"(got {affinity_wait!r})"
            )

        if max_connection_age is None:
            max_connection_age = known_connection_age(resolved_base)
        age = _seconds("max_connection_age", max_connection_age)
        if isinstance(connection_age_margin, bool) or not isinstance(
            connection_age_margin, (int, float)
        ):
            raise ConfigurationError(
                f"connection_age_margin must be a number of seconds (got {connection_age_margin!r})"
            )
        if not math.isfinite(connection_age_margin) or connection_age_margin < 0:
            raise ConfigurationError(
                "connection_age_margin must be zero or a positive number of seconds"
            )

        if isinstance(verify, str):
            if not os.path.exists(verify):
                raise ConfigurationError(
                    f"verify names a CA bundle that does not exist: {verify!r}"
                )
        elif not isinstance(verify, bool):
            raise ConfigurationError("verify must be True, False or the path of a CA bundle")

        proxy_settings = None
        if proxy is not None:
            if not isinstance(proxy, str) or not proxy.strip():
                raise ConfigurationError("proxy must be a URL string such as http://proxy:3128")
            proxy_settings = ProxySettings.parse(proxy)

        return cls(
            api_key=api_key,
            base_url=resolved_base.strip(),
            websocket_url=resolved_ws,
            organization=organization,
            project=project,
            default_headers=MappingProxyType(headers),
            max_connections=max_connections,
            min_connections=min_connections,
            pool_timeout=_seconds("pool_timeout", pool_timeout),
            connect_timeout=_seconds("connect_timeout", connect_timeout),
            read_timeout=_seconds("read_timeout", read_timeout),
            max_connection_age=age,
            connection_age_margin=float(connection_age_margin),
            idle_timeout=_optional_seconds("idle_timeout", idle_timeout),
            ping_interval=_optional_seconds("ping_interval", ping_interval),
            max_retries=max_retries,
            verify=verify,
            proxy=proxy_settings,
            affinity_wait=float(affinity_wait),
            max_message_size=max_message_size,
            transport=transport,
            lanes=lanes,
        )

    @property
    def uses_header_auth(self) -> bool:
        """True when ``default_headers`` carries the credential (``api-key``, ``Authorization``)."""
        return any(name.lower() in _CREDENTIAL_HEADERS for name in self.default_headers)

    def require_api_key(self) -> None:
        """Raise ``ConfigurationError`` when there is no credential to send."""
        if self.api_key is None and not self.uses_header_auth:
            raise ConfigurationError(
                "no API key: pass api_key=... to oaiws.Client or set the OPENAI_API_KEY "
                "environment variable (for Azure, an 'api-key' header in default_headers works too)"
            )

    @property
    def effective_age_margin(self) -> float:
        """The margin actually kept before ``max_connection_age``.

        Clamped to a quarter of the age so that a short limit (a gateway's, or a test's few
        seconds) still leaves most of a connection's life usable.
        """
        return min(self.connection_age_margin, self.max_connection_age * 0.25)

    @property
    def user_agent(self) -> str:
        return _user_agent()

    def handshake_headers(self) -> dict[str, str]:
        """The headers of one upgrade request. Holds credentials: never log or show them."""
        self.require_api_key()
        headers: dict[str, str] = {"User-Agent": self.user_agent}
        has_authorization = any(name.lower() == "authorization" for name in self.default_headers)
        if self.api_key is not None and not has_authorization:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if self.organization is not None:
            headers["OpenAI-Organization"] = self.organization
        if self.project is not None:
            headers["OpenAI-Project"] = self.project
        # default_headers come last so a caller can override anything above, case-insensitively.
        for name, value in self.default_headers.items():
            for existing in [key for key in headers if key.lower() == name.lower()]:
                del headers[existing]
            headers[name] = value
        return headers

    def __repr__(self) -> str:
        shown_headers = {
            name: ("***" if name.lower() in _SECRET_HEADERS else value)
            for name, value in self.default_headers.items()
        }
        fields = [
            ("api_key", "***" if self.api_key is not None else None),
            ("websocket_url", display_url(self.websocket_url)),
            ("organization", self.organization),
            ("project", self.project),
            ("default_headers", shown_headers or None),
            ("max_connections", self.max_connections),
            ("min_connections", self.min_connections),
            ("pool_timeout", self.pool_timeout),
            ("connect_timeout", self.connect_timeout),
            ("read_timeout", self.read_timeout),
            ("max_connection_age", self.max_connection_age),
            ("connection_age_margin", self.connection_age_margin),
            ("idle_timeout", self.idle_timeout),
            ("ping_interval", self.ping_interval),
            ("max_retries", self.max_retries),
            ("verify", self.verify),
            ("proxy", self.proxy.display() if self.proxy is not None else None),
            ("affinity_wait", self.affinity_wait),
            ("max_message_size", self.max_message_size),
            ("transport", self.transport),
            ("lanes", self.lanes),
        ]
        body = ", ".join(f"{name}={value!r}" for name, value in fields if value is not None)
        return f"ClientConfig({body})"


def _check_websocket_url(url: str, name: str) -> str:
    parts = _split(url, name)
    if parts.scheme.lower() not in ("ws", "wss"):
        raise ConfigurationError(
            f"{name} must start with wss:// or ws:// (got scheme {parts.scheme!r})"
        )
    return url.strip()


def display_url(url: str) -> str:
    """The URL without its query string, which some gateways use for keys or tokens."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
