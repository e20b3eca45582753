"""The emulator's options: one validated value shared by the in-process server, the child
process and the command line, so the three can never drift apart."""

from __future__ import annotations

import argparse
import ipaddress
import math
from dataclasses import dataclass, fields
from typing import Any, Optional

from oaiws.errors import ConfigurationError

DEFAULT_API_KEY = "sk-test"

# The environment variable that carries the key to a child process: a key on a command line
# is visible to every local user through `ps`.
API_KEY_ENV = "OAIWS_EMULATOR_API_KEY"

# How the WebSocket mode treats stream_id (docs/emulator.md, "Lane modes"): "on" serves lanes
# as OpenAI does; "ignore" accepts the field and serves one response at a time per connection,
# as Azure and xAI do; "refuse" answers a create that carries it with invalid_stream_id.
LANE_MODES = ("on", "ignore", "refuse")


@dataclass(frozen=True)
class EmulatorOptions:
    """Every knob of the emulator. See docs/emulator.md for what each one models."""

    api_key: str = DEFAULT_API_KEY
    tls: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    max_connection_age: float = 3600.0
    idle_timeout: Optional[float] = None
    ping_interval: Optional[float] = None
    ping_timeout: float = 10.0
    deltas: int = 8
    delta_delay: float = 0.0
    first_event_delay: float = 0.0
    hydration_delay: float = 0.0
    input_cost_per_kb: float = 0.0
    handshake_delay: float = 0.0
    certfile: Optional[str] = None
    keyfile: Optional[str] = None
    session_tickets: int = 2
    websocket_status: Optional[int] = None
    max_requests_per_minute: Optional[float] = None
    max_tokens_per_minute: Optional[float] = None
    rate_limit_burst: float = 1.0
    lanes: str = "on"

    def __post_init__(self) -> None:
        if not isinstance(self.api_key, str) or not self.api_key:
            raise ConfigurationError("api_key must be a non-empty string")
        check_loopback(self.host)
        if (
            not isinstance(self.port, int)
            or isinstance(self.port, bool)
            or not 0 <= self.port <= 65535
        ):
            raise ConfigurationError(f"port must be an integer in 0..65535, not {self.port!r}")
        _positive("max_connection_age", self.max_connection_age)
        _positive("ping_timeout", self.ping_timeout)
        _positive("rate_limit_burst", self.rate_limit_burst)
        for name in (
            "idle_timeout",
            "ping_interval",
            "max_requests_per_minute",
            "max_tokens_per_minute",
        ):
            value = getattr(self, name)
            if value is not None:
                _positive(name, value)
        for name in (
            "delta_delay",
            "first_event_delay",
            "hydration_delay",
            "input_cost_per_kb",
            "handshake_delay",
        ):
            _non_negative(name, getattr(self, name))
        if not isinstance(self.deltas, int) or isinstance(self.deltas, bool) or self.deltas < 0:
            raise ConfigurationError(f"deltas must be a non-negative integer, not {self.deltas!r}")
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigurationError("certfile and keyfile go together: give both or neither")
        if self.certfile is not None and not self.tls:
            raise ConfigurationError("certfile/keyfile need tls=True")
        tickets = self.session_tickets
        if not isinstance(tickets, int) or isinstance(tickets, bool) or tickets < 0:
            raise ConfigurationError(
                f"session_tickets must be a non-negative integer, not {tickets!r}"
            )
        if tickets != 2 and not self.tls:
            raise ConfigurationError("session_tickets needs tls=True")
        check_websocket_status(self.websocket_status)
        if self.lanes not in LANE_MODES:
            raise ConfigurationError(
                f"lanes must be one of {', '.join(map(repr, LANE_MODES))}, not {self.lanes!r}"
            )

    def __repr__(self) -> str:
        # The key is a secret even in a test double: users paste reprs into bug reports.
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "api_key"
        )
        return f"EmulatorOptions({shown})"

    def to_cli_args(self) -> list[str]:
        """The command-line flags that rebuild these options in a child (the key excepted)."""
        args: list[str] = []
        defaults = EmulatorOptions()
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "api_key" or value == getattr(defaults, f.name):
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                if value:
                    args.append(flag)
            else:
                args += [flag, str(value)]
        return args


def check_loopback(host: str) -> None:
    """Refuse any address other hosts could reach: the emulator accepts one well-known key."""
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigurationError(
            f"the emulator binds loopback addresses only (127.0.0.1, ::1, localhost), not {host!r}"
        ) from None
    if not address.is_loopback:
        raise ConfigurationError(
            f"the emulator binds loopback addresses only (127.0.0.1, ::1, localhost), not {host!r}:"
            " it accepts a test key and must not be reachable from the network"
        )


def check_websocket_status(status: Any) -> None:
    """None (WebSocket mode on) or the 4xx/5xx status every upgrade is answered with."""
    if status is None:
        return
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        raise ConfigurationError(
            f"websocket_status must be None or an HTTP error status (400-599), not {status!r}"
        )


def _positive(name: str, value: Any) -> None:
    if not _is_number(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")


def _non_negative(name: str, value: Any) -> None:
    if not _is_number(value) or value < 0:
        raise ConfigurationError(f"{name} must be a non-negative number, not {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The CLI flags, one per option (`--api-key` defaults to $OAIWS_EMULATOR_API_KEY)."""
    d = EmulatorOptions()
    add = parser.add_argument
    add("--host", default=d.host, help="loopback address to bind (default %(default)s)")
    add("--port", type=int, default=d.port, help="port; 0 picks a free one (default %(default)s)")
    add("--tls", action="store_true", help="serve https/wss with a generated CA unless --certfile")
    add("--certfile", default=None, help="PEM certificate chain for --tls")
    add("--keyfile", default=None, help="PEM private key for --tls")
    add(
        "--session-tickets",
        type=int,
        default=d.session_tickets,
        help="TLS 1.3 session tickets sent after each handshake (default %(default)s, as "
        "OpenSSL does); 0 sends none",
    )
    add(
        "--api-key",
        default=None,
        help=f"the accepted key (default ${API_KEY_ENV}, else {DEFAULT_API_KEY!r})",
    )
    add(
        "--deltas",
        type=int,
        default=d.deltas,
        help="text deltas per response (default %(default)s)",
    )
    add("--delta-delay", type=float, default=d.delta_delay, help="seconds between deltas")
    add(
        "--first-event-delay",
        type=float,
        default=d.first_event_delay,
        help="seconds before a response's first event",
    )
    add(
        "--max-connection-age",
        type=float,
        default=d.max_connection_age,
        help="seconds before a connection is retired (default %(default)s)",
    )
    add(
        "--idle-timeout", type=float, default=None, help="close 1001 after this many silent seconds"
    )
    add("--ping-interval", type=float, default=None, help="send a ping every this many seconds")
    add(
        "--ping-timeout",
        type=float,
        default=d.ping_timeout,
        help="close 1011 when a ping gets no pong within this (default %(default)s)",
    )
    add(
        "--hydration-delay",
        type=float,
        default=d.hydration_delay,
        help="extra seconds when a cache miss loads a stored response",
    )
    add(
        "--input-cost-per-kb",
        type=float,
        default=d.input_cost_per_kb,
        help="seconds of processing per KB of context the server must read",
    )
    add(
        "--handshake-delay",
        type=float,
        default=d.handshake_delay,
        help="seconds added to every WebSocket upgrade",
    )
    add(
        "--websocket-status",
        type=int,
        default=None,
        metavar="STATUS",
        help="answer every WebSocket upgrade with this HTTP error status (e.g. 404) instead of"
        " 101, as a server without WebSocket mode does; HTTP keeps working",
    )
    add(
        "--max-requests-per-minute",
        type=float,
        default=None,
        metavar="N",
        help="answer 429 with retry-after beyond this many requests per minute",
    )
    add(
        "--max-tokens-per-minute",
        type=float,
        default=None,
        metavar="N",
        help="answer 429 with retry-after beyond this many tokens per minute (input tokens"
        " plus max_output_tokens)",
    )
    add(
        "--rate-limit-burst",
        type=float,
        default=d.rate_limit_burst,
        metavar="SECONDS",
        help="how many seconds of either budget may arrive at once (default %(default)s)",
    )
    add(
        "--lanes",
        choices=LANE_MODES,
        default=d.lanes,
        help="stream_id lanes: on (as OpenAI), ignore (accepted, one response at a time per"
        " connection, as Azure and xAI), refuse (invalid_stream_id) (default %(default)s)",
    )


def options_from_namespace(args: argparse.Namespace, api_key: str) -> EmulatorOptions:
    return EmulatorOptions(
        api_key=api_key,
        tls=args.tls,
        host=args.host,
        port=args.port,
        max_connection_age=args.max_connection_age,
        idle_timeout=args.idle_timeout,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        deltas=args.deltas,
        delta_delay=args.delta_delay,
        first_event_delay=args.first_event_delay,
        hydration_delay=args.hydration_delay,
        input_cost_per_kb=args.input_cost_per_kb,
        handshake_delay=args.handshake_delay,
        certfile=args.certfile,
        keyfile=args.keyfile,
        session_tickets=args.session_tickets,
        websocket_status=args.websocket_status,
        max_requests_per_minute=args.max_requests_per_minute,
        max_tokens_per_minute=args.max_tokens_per_minute,
        rate_limit_burst=args.rate_limit_burst,
        lanes=args.lanes,
    )
