"""Helpers shared by the client tests (importable as ``support`` from the test modules)."""

from __future__ import annotations

import base64
import hashlib
import socket
import socketserver
import struct
import threading
from typing import Any, Callable

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_upgrade(rfile: Any) -> str:
    """Read a WebSocket upgrade request's head from ``rfile``; its ``Sec-WebSocket-Key``."""
    key = ""
    while True:
        line = rfile.readline()
        if line in (b"\r\n", b"\n", b""):
            return key
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "sec-websocket-key":
            key = value.strip()


def upgrade_answer(key: str, *, padding: int = 0) -> bytes:
    """A valid ``101 Switching Protocols`` answer to an upgrade that sent ``key``."""
    accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
    pad = f"X-Padding: {'x' * padding}\r\n" if padding else ""
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n{pad}\r\n"
    ).encode()


def text_frame(payload: bytes, *, fin: bool = True) -> bytes:
    """An unmasked server-to-client text frame (RFC 6455): header and payload."""
    first = (0x80 if fin else 0x00) | 0x1
    length = len(payload)
    if length < 126:
        return bytes([first, length]) + payload
    if length < 65536:
        return bytes([first, 126]) + length.to_bytes(2, "big") + payload
    return bytes([first, 127]) + length.to_bytes(8, "big") + payload


def read_client_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One masked frame from a client, read from ``sock``: ``(opcode, payload)``."""

    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("the client is gone")
            data += chunk
        return data

    first, second = exactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", exactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", exactly(8))
    mask = exactly(4)
    payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(exactly(length)))
    return first & 0x0F, payload


class RawRequest:
    """One request a ``RawServer`` read: its method, path, headers (lower-case) and body."""

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.path, self.headers, self.body = method, path, headers, body


# A raw server's answer: writes whatever it likes on wfile; True keeps the connection for the
# next request, False closes it. ``stop`` is set when the test ends.
Answer = Callable[[RawRequest, Any, threading.Event], bool]


class _RawHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: RawServer = self.server  # type: ignore[assignment]
        while True:
            line = self.rfile.readline()
            if not line.strip():
                return
            method, path = line.decode("latin-1").split()[:2]
            headers: dict[str, str] = {}
            while True:
                header = self.rfile.readline()
                if header in (b"\r\n", b"\n", b""):
                    break
                name, _, value = header.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = self.rfile.read(int(headers.get("content-length", "0")))
            request = RawRequest(method, path, headers, body)
            with server.lock:
                server.requests.append(request)
            try:
                keep = server.answer(request, self.wfile, server.stop)
                self.wfile.flush()
            except OSError:
                server.client_gone.set()
                return
            if not keep:
                return


class RawServer(socketserver.ThreadingTCPServer):
    """A loopback HTTP server whose every answer a test writes byte for byte: what a lying,
    slow or redirecting server says, which the emulator never would."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer: Answer) -> None:
        super().__init__(("127.0.0.1", 0), _RawHandler)
        self.answer = answer
        self.lock = threading.Lock()
        self.requests: list[RawRequest] = []
        self.stop = threading.Event()
        self.client_gone = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def start(self) -> RawServer:
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def end(self) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()
