"""How many short responses per second the emulator serves on one kept connection.

The emulator runs in its own process (EmulatorProcess), so the measured loop never shares a
GIL with the server. Run: python -m benchmarks.emulator_throughput [--seconds 5] [--deltas 20]
"""

from __future__ import annotations

import argparse
import json
import time

import websocket

from oaiws.testing import EmulatorProcess

TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}


def run(seconds: float, deltas: int) -> dict[str, float]:
    with EmulatorProcess(deltas=deltas) as emulator:
        ws = websocket.create_connection(
            emulator.websocket_url, header=[f"Authorization: Bearer {emulator.api_key}"], timeout=10
        )
        request = json.dumps({"type": "response.create", "model": "gpt-test", "input": "Hi"})
        try:
            ws.send(request)  # one warm-up turn, not measured
            while json.loads(ws.recv())["type"] not in TERMINAL:
                pass
            responses = events = 0
            start = time.perf_counter()
            deadline = start + seconds
            while time.perf_counter() < deadline:
                ws.send(request)
                while True:
                    events += 1
                    kind = json.loads(ws.recv())["type"]
                    if kind in TERMINAL:
                        if kind != "response.completed":
                            raise RuntimeError(f"unexpected terminal event {kind}")
                        break
                responses += 1
            elapsed = time.perf_counter() - start
        finally:
            ws.close()
        stats = emulator.stats()
    return {
        "seconds": round(elapsed, 3),
        "responses": responses,
        "responses_per_second": round(responses / elapsed, 1),
        "events_per_second": round(events / elapsed, 1),
        "mean_ms_per_response": round(1000 * elapsed / responses, 3),
        "server_responses_completed": stats["responses_completed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--deltas", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.deltas), indent=2))


if __name__ == "__main__":
    main()
