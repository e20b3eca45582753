"""What ``Emulator`` and ``EmulatorProcess`` share: their options, addresses and ``with`` life."""

from __future__ import annotations

from types import TracebackType
from typing import Optional, TypeVar

from ._options import EmulatorOptions

_Self = TypeVar("_Self", bound="EmulatorBase")


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class EmulatorBase:
    """Addresses derived from the options and the port actually bound, so that an in-process
    emulator and one in a child process can never disagree on them."""

    _options: EmulatorOptions
    _port: int
    _ca_path: Optional[str]

    def start(self: _Self) -> _Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def options(self) -> EmulatorOptions:
        return self._options

    @property
    def api_key(self) -> str:
        return self._options.api_key

    @property
    def host(self) -> str:
        return self._options.host

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        scheme = "https" if self._options.tls else "http"
        return f"{scheme}://{url_host(self.host)}:{self._port}/v1"

    @property
    def websocket_url(self) -> str:
        scheme = "wss" if self._options.tls else "ws"
        return f"{scheme}://{url_host(self.host)}:{self._port}/v1/responses"

    @property
    def ca_path(self) -> Optional[str]:
        """The certificate a client should trust (tls=True), else None. With your own
        ``certfile``, that file (it holds the chain) is returned."""
        return self._ca_path

    def __enter__(self: _Self) -> _Self:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()
