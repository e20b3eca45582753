"""``Emulator``: the protocol server on a background thread of the calling process."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import socket
import ssl
import tempfile
import threading
import time
from collections import deque
from typing import Any, Optional, Union

from oaiws.errors import ConfigurationError

from ._background import BackgroundRuns
from ._base import EmulatorBase
from ._engine import ARRIVALS_KEPT, ServerContext, Switches
from ._faults import Fault, FaultQueue
from ._options import DEFAULT_API_KEY, EmulatorOptions, check_websocket_status
from ._ratelimit import RateLimiter
from ._state import ResponseStore
from ._stats import Stats

logger = logging.getLogger("oaiws.testing")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
SHUTDOWN_GRACE = 0.5


class Emulator(EmulatorBase):
    """The Responses API WebSocket protocol, served from a thread of this process.

    ``start()`` binds (port 0 picks a free port) and returns once the server accepts
    connections; ``stop()`` closes every socket, releases the port and joins the thread.
    Stats and the store of ``store: true`` responses survive a stop/start (like a server
    restart: connection caches die, storage stays). See docs/emulator.md.
    """

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        tls: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        max_connection_age: float = 3600.0,
        idle_timeout: Optional[float] = None,
        ping_interval: Optional[float] = None,
        ping_timeout: float = 10.0,
        deltas: int = 8,
        delta_delay: float = 0.0,
        first_event_delay: float = 0.0,
        hydration_delay: float = 0.0,
        input_cost_per_kb: float = 0.0,
        handshake_delay: float = 0.0,
        certfile: Optional[str] = None,
        keyfile: Optional[str] = None,
        session_tickets: int = 2,
        websocket_status: Optional[int] = None,
        max_requests_per_minute: Optional[float] = None,
        max_tokens_per_minute: Optional[float] = None,
        rate_limit_burst: float = 1.0,
        lanes: str = "on",
    ) -> None:
        self._options = EmulatorOptions(
            api_key=api_key,
            tls=tls,
            host=host,
            port=port,
            max_connection_age=max_connection_age,
            idle_timeout=idle_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            deltas=deltas,
            delta_delay=delta_delay,
            first_event_delay=first_event_delay,
            hydration_delay=hydration_delay,
            input_cost_per_kb=input_cost_per_kb,
            handshake_delay=handshake_delay,
            certfile=certfile,
            keyfile=keyfile,
            session_tickets=session_tickets,
            websocket_status=websocket_status,
            max_requests_per_minute=max_requests_per_minute,
            max_tokens_per_minute=max_tokens_per_minute,
            rate_limit_burst=rate_limit_burst,
            lanes=lanes,
        )
        self._stats = Stats()
        self._arrivals: deque[float] = deque(maxlen=ARRIVALS_KEPT)
        options = self._options
        # One budget for the emulator's life, like an account's: it survives a stop/start.
        self._limits = RateLimiter(
            options.max_requests_per_minute, options.max_tokens_per_minute, options.rate_limit_burst
        )
        self._faults = FaultQueue()
        self._store = ResponseStore()
        self._switches = Switches(websocket_status=self._options.websocket_status)
        self._background = BackgroundRuns()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._app: Any = None
        self._runner: Any = None
        self._port = port
        self._tls_dir: Optional[tempfile.TemporaryDirectory[str]] = None
        self._ca_path: Optional[str] = None

    @classmethod
    def from_options(cls, options: EmulatorOptions) -> Emulator:
        return cls(**dataclasses.asdict(options))

    # -- addresses -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Emulator {self.base_url} {state}>"

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> Emulator:
        with self._lock:
            if self._thread is not None:
                return self
            _optional("aiohttp.web", "aiohttp")  # fail here, in the caller, when it is missing
            ssl_context = self._ssl_context()
            sock = self._bind()
            ready = threading.Event()
            failure: list[BaseException] = []
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=self._serve,
                args=(loop, sock, ssl_context, ready, failure),
                name=f"oaiws-emulator-{self._port}",
                daemon=True,
            )
            thread.start()
            if not ready.wait(START_TIMEOUT) or failure:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(loop.stop)
                thread.join(STOP_TIMEOUT)
                sock.close()
                self._cleanup_tls()
                if failure and isinstance(failure[0], ConfigurationError):
                    raise failure[0]
                if failure:
                    raise RuntimeError(
                        f"the emulator failed to start: {failure[0]!r}"
                    ) from failure[0]
                raise RuntimeError("the emulator did not start in time")
            self._loop, self._thread = loop, thread
            logger.info("emulator listening on %s", self.base_url)
            return self

    def stop(self) -> None:
        with self._lock:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None:
                return
            try:
                future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
                future.result(STOP_TIMEOUT)
            except Exception:  # stop() must always release the thread, whatever happened
                logger.exception("emulator shutdown failed")
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT)
            self._thread = self._loop = None
            self._app = self._runner = None
            self._cleanup_tls()
            logger.info("emulator on port %s stopped", self._port)

    def _ssl_context(self) -> Optional[ssl.SSLContext]:
        options = self._options
        if not options.tls:
            return None
        tls = _optional("oaiws.testing._tls", "cryptography")
        if options.certfile is not None:
            self._ca_path = options.certfile
            given: ssl.SSLContext = tls.server_context(
                options.certfile, options.keyfile, options.session_tickets
            )
            return given
        self._tls_dir = tempfile.TemporaryDirectory(prefix="oaiws-emulator-tls-")
        self._ca_path, certfile, keyfile = tls.generate(self._tls_dir.name)
        generated: ssl.SSLContext = tls.server_context(certfile, keyfile, options.session_tickets)
        return generated

    def _cleanup_tls(self) -> None:
        if self._tls_dir is not None:
            self._tls_dir.cleanup()
            self._tls_dir = None
            self._ca_path = None

    def _bind(self) -> socket.socket:
        host = "127.0.0.1" if self.host == "localhost" else self.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # A restart on the same port must not wait for TIME_WAIT sockets to expire.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self._options.port))
            sock.listen(512)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            self._cleanup_tls()
            raise ConfigurationError(
                f"the emulator cannot listen on {host}:{self._options.port}: {exc}"
            ) from None
        self._port = sock.getsockname()[1]
        return sock

    def _serve(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        ssl_context: Optional[ssl.SSLContext],
        ready: threading.Event,
        failure: list[BaseException],
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._setup(sock, ssl_context))
        except BaseException as exc:  # noqa: BLE001 - start() re-raises it in the caller
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _setup(self, sock: socket.socket, ssl_context: Optional[ssl.SSLContext]) -> None:
        web = _optional("aiohttp.web", "aiohttp")
        server = _optional("oaiws.testing._server", "aiohttp")
        ctx = ServerContext(
            self._options,
            self._stats,
            self._faults,
            self._store,
            self._background,
            switches=self._switches,
            limits=self._limits,
            arrivals=self._arrivals,
        )
        self._app = server.build_app(ctx)
        self._runner = web.AppRunner(
            self._app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.SockSite(self._runner, sock, ssl_context=ssl_context)
        await site.start()

    async def _shutdown(self) -> None:
        # Background responses still running end now (as failed), which also ends the
        # streams that follow them.
        await self._background.shutdown()
        if self._app is not None:
            server = _optional("oaiws.testing._server", "aiohttp")
            # Going away politely, but a client that is not reading must not hold stop() up.
            server.close_all(self._app, 1001)
            deadline = time.monotonic() + SHUTDOWN_GRACE
            while server.open_sessions(self._app) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            server.abort_all(self._app)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- control -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Union[int, float]]:
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        """Zero the counters and forget the request times."""
        self._stats.reset()
        self._arrivals.clear()

    def request_times(self) -> list[float]:
        """When each ``response.create`` arrived (WebSocket or HTTP, admitted or refused), as
        ``time.monotonic()`` readings of this process, oldest first; the latest 100,000."""
        return list(self._arrivals)

    def inject(self, fault: Fault, *, on: str = "request", times: int = 1) -> None:
        """Queue ``fault`` for the next ``times`` upgrades (on="connection") or requests."""
        self._faults.inject(fault, on=on, times=times)

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def websocket_status(self) -> Optional[int]:
        """None while WebSocket mode is on, else the status every upgrade is answered with."""
        return self._switches.websocket_status

    def set_websocket_status(self, status: Optional[int]) -> None:
        """Refuse every WebSocket upgrade from now on with ``status`` (a 4xx/5xx, e.g. 404, as a
        server without WebSocket mode answers), or serve upgrades again with ``None``. HTTP keeps
        working either way; open connections stay open. Kept across a stop()/start()."""
        check_websocket_status(status)
        self._switches.websocket_status = status

    def close_all_connections(self, code: Optional[int] = 1001) -> None:
        """Close every open socket now; ``code=None`` drops TCP with no close frame."""
        if code is not None and not (isinstance(code, int) and 1000 <= code <= 4999):
            raise ConfigurationError(f"code must be 1000-4999 or None, not {code!r}")
        loop, app = self._loop, self._app
        if loop is None or app is None:
            return
        server = _optional("oaiws.testing._server", "aiohttp")

        async def close() -> int:
            result: int = server.close_all(app, code)
            return result

        asyncio.run_coroutine_threadsafe(close(), loop).result(STOP_TIMEOUT)


def _optional(module: str, package: str) -> Any:
    """Import a module that needs an optional package, or say which extra to install.

    The server library is imported only when an emulator starts, so that importing
    oaiws.testing (and loading the pytest plugin) works without the ``emulator`` extra.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"the emulator needs {package!r} ({exc}): pip install 'oaiws[emulator]'"
        ) from None


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
