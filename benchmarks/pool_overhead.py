"""What the pooled Client costs over a bare websocket-client loop, per warm request.

Both sides talk to the same emulator in a child process (TLS on, 20 deltas, no delays), send
the same ``response.create`` payload on one kept connection, and read every frame up to
``response.completed``, decoding each with the same JSON library. The raw loop skips
websocket-client's pure-Python UTF-8 check, as the benchmarks package's floor and oaiws do.
The runs alternate, one Client request then one raw request, so drift in the machine hits
both equally.

    python benchmarks/pool_overhead.py [--requests 2000] [--warmup 100]

Target: median ratio <= 1.10 (goal 1.05).
"""

from __future__ import annotations

import argparse
import gc
import ssl
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import websocket

import oaiws
from oaiws import _json
from oaiws.testing import EmulatorProcess

PAYLOAD: dict[str, Any] = {"model": "gpt-5.5", "input": "Measure me.", "store": False}


def _raw_connection(emulator: EmulatorProcess) -> websocket.WebSocket:
    return websocket.create_connection(
        emulator.websocket_url,
        header=[f"Authorization: Bearer {emulator.api_key}"],
        sslopt={"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": emulator.ca_path},
        enable_multithread=False,
        # As the floor of the benchmarks package (and oaiws itself): websocket-client's UTF-8
        # check is pure Python and costs most of the receive path, while the JSON decoder
        # still rejects invalid UTF-8. Without this the floor is slower than a careful loop.
        skip_utf8_validation=True,
    )


def _raw_request(ws: websocket.WebSocket, text: str) -> int:
    ws.send(text)
    frames = 0
    while True:
        event = _json.loads(ws.recv())
        frames += 1
        if event["type"] == "response.completed":
            return frames


def _client_request(client: oaiws.Client) -> int:
    frames = 0
    for event in client.generate_response(**PAYLOAD):
        frames += 1
        if event.type == "response.completed":
            pass
    return frames


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args(argv)

    with EmulatorProcess(tls=True, deltas=20) as emulator:
        client = oaiws.Client(
            api_key=emulator.api_key,
            base_url=emulator.base_url,
            verify=emulator.ca_path or True,
            max_connections=1,
        )
        ws = _raw_connection(emulator)
        text = _json.dumps({"type": "response.create", **PAYLOAD})
        try:
            for _ in range(args.warmup):
                _client_request(client)
                _raw_request(ws, text)
            client_times: list[float] = []
            raw_times: list[float] = []
            gc.collect()
            for _ in range(args.requests):
                started = time.perf_counter()
                frames_client = _client_request(client)
                middle = time.perf_counter()
                frames_raw = _raw_request(ws, text)
                ended = time.perf_counter()
                assert frames_client == frames_raw, (frames_client, frames_raw)
                client_times.append(middle - started)
                raw_times.append(ended - middle)
            stats = client.pool_stats()
        finally:
            ws.close()
            client.close()

    def row(name: str, samples: list[float]) -> str:
        return (
            f"{name:<22} median {statistics.median(samples) * 1e3:8.3f} ms   "
            f"p99 {_percentile(samples, 0.99) * 1e3:8.3f} ms"
        )

    ratio = statistics.median(client_times) / statistics.median(raw_times)
    p99_ratio = _percentile(client_times, 0.99) / _percentile(raw_times, 0.99)
    print(f"{args.requests} warm requests each, interleaved; {frames_raw} frames per response;")
    print(f"JSON: {_json.BACKEND}; TLS on; python {sys.version.split()[0]}")
    print(row("oaiws.Client (pool=1)", client_times))
    print(row("raw websocket-client", raw_times))
    print(f"ratio (median)         {ratio:.3f}x   (target <= 1.10x, goal 1.05x)")
    print(f"ratio (p99)            {p99_ratio:.3f}x")
    print(f"client handshakes: {stats['connections_opened']}, requests: {stats['checkouts']}")
    return 0 if ratio <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
