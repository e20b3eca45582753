"""A 20-turn ``store: false`` tool loop: oaiws ``Conversation`` against full-context resends.

Three contenders run the same script against one emulator (TLS on, a per-KB input cost so
that the server's work grows with what it must read, as a real model's does):

- ``oaiws_conversation``: ``client.conversation(store=False)``: each turn sends
  ``previous_response_id`` plus its new items, on the connection whose cache holds the chain;
- ``naive_pool``: an oaiws pool that gives any idle connection to any turn, so every turn
  resends the whole transcript (what a pool without affinity must do with ``store: false``);
- ``openai_http``: the official SDK over HTTP, ``responses.create(..., stream=True)``,
  resending the whole transcript each turn.

The script alternates a user question that names the tool (the model answers with a
``function_call``) and the function's output (the model answers with text). Every contender
must get exactly the same answers (the emulator's model is deterministic), which the
benchmark checks. Bytes are what the server received per turn (its ``bytes_received``
counter: WebSocket frames or HTTP bodies); time is wall time per turn, the median over
``repeats`` runs, handshakes excluded (every contender is warmed up first).

    python -m benchmarks.conversation [--turns 20] [--repeats 3] [--input-cost-per-kb 0.002]

``run(emulator, turns=20, ...)`` is the scenario, for other benchmark drivers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import oaiws
from oaiws.testing import EmulatorProcess

MODEL = "gpt-test"
INSTRUCTIONS = (
    "You are a travel assistant. Answer in one short paragraph. When the user asks about the "
    "weather, call get_weather with the city and use its result."
)
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The forecast for a city: temperatures, rain, wind, for the next days.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name."}},
            "required": ["city"],
            "additionalProperties": False,
        },
    }
]
# About 400 bytes per question and 900 per tool result: the context grows as a real
# assistant's does, so resending it costs what it would.
_QUESTION = (
    "Question {n}: I am planning a trip next month and would like to know more about the "
    "conditions there. I care about rain, wind and how warm the evenings are, because we "
    "will eat outside most nights and walk a lot during the day. Could you use get_weather "
    "for stop number {n} of the itinerary, and tell me what to pack? Keep it short please, "
    "a few sentences are plenty for me to decide."
)


def _tool_output(n: int) -> str:
    days = [
        {
            "day": d,
            "high_c": 20 + d % 5,
            "low_c": 11 + d % 3,
            "rain_mm": (n * d) % 7,
            "wind_kmh": 10 + (n + d) % 15,
            "summary": "partly cloudy with a chance of showers",
        }
        for d in range(1, 8)
    ]
    return json.dumps({"stop": n, "forecast": days})


def _next_input(turn: int, previous: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn 0, 2, 4...: a question; turn 1, 3, 5...: the output of the call just made."""
    if turn % 2 == 0:
        return [{"role": "user", "content": _QUESTION.format(n=turn // 2 + 1)}]
    calls = [item for item in previous if item.get("type") == "function_call"]
    if not calls:
        raise RuntimeError(f"turn {turn}: the model did not call the tool")
    return [
        {"type": "function_call_output", "call_id": call["call_id"], "output": _tool_output(turn)}
        for call in calls
    ]


def _as_input(item: dict[str, Any]) -> dict[str, Any]:
    # store=false: ids name nothing the server kept (what Conversation's replay does too).
    return {key: value for key, value in item.items() if key != "id"}


def _text(items: list[dict[str, Any]]) -> str:
    """What a turn said: its text, or the calls it made."""
    said = []
    for item in items:
        if item.get("type") == "function_call":
            said.append(f"call {item['name']}({item['arguments']})")
        for part in item.get("content") or ():
            if isinstance(part, dict) and part.get("type") == "output_text":
                said.append(part["text"])
    return " ".join(said)


# -- the contenders: each runs one turn and returns its output items --------------------


class _Conversation:
    name = "oaiws_conversation"

    def __init__(self, client: oaiws.Client) -> None:
        self._client = client
        self._conv: Optional[oaiws.Conversation] = None

    def start(self) -> None:
        self._conv = self._client.conversation(
            model=MODEL, instructions=INSTRUCTIONS, tools=TOOLS, store=False
        )

    def turn(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self._conv is not None
        return list(self._conv.send(items)["output"])

    def stop(self) -> None:
        if self._conv is not None:
            self._conv.close()


class _NaivePool:
    name = "naive_pool"

    def __init__(self, client: oaiws.Client) -> None:
        self._client = client
        self._transcript: list[dict[str, Any]] = []

    def start(self) -> None:
        self._transcript = []

    def turn(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self._transcript += items
        response = self._client.create_response(
            model=MODEL,
            instructions=INSTRUCTIONS,
            tools=TOOLS,
            store=False,
            input=self._transcript,
        )
        output = list(response["output"])
        self._transcript += [_as_input(item) for item in output]
        return output

    def stop(self) -> None:
        pass


class _OpenAIHTTP:
    name = "openai_http"

    def __init__(self, emulator: Any) -> None:
        # Imported here, so that the other contenders run where the SDK is not installed.
        import openai  # noqa: PLC0415

        try:  # newer SDKs build on httpx2, older ones on httpx
            import httpx2 as httpx_module  # noqa: PLC0415
        except ImportError:
            import httpx as httpx_module  # noqa: PLC0415

        verify: Any = emulator.ca_path or True
        self._sdk = openai.OpenAI(
            base_url=emulator.base_url,
            api_key=emulator.api_key,
            http_client=httpx_module.Client(verify=verify),
            max_retries=0,
        )
        self._transcript: list[dict[str, Any]] = []

    def start(self) -> None:
        self._transcript = []

    def turn(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self._transcript += items
        stream = self._sdk.responses.create(
            model=MODEL,
            instructions=INSTRUCTIONS,
            tools=TOOLS,  # type: ignore[arg-type]
            store=False,
            input=self._transcript,
            stream=True,  # type: ignore[arg-type]
        )
        output: list[dict[str, Any]] = []
        for event in stream:
            if event.type == "response.completed":
                output = [item.model_dump(exclude_none=True) for item in event.response.output]
        self._transcript += [_as_input(item) for item in output]
        return output

    def stop(self) -> None:
        pass

    def close(self) -> None:
        self._sdk.close()


# -- the scenario -------------------------------------------------------------------------


def _one_run(
    contender: Any, turns: int, bytes_received: Callable[[], int]
) -> tuple[list[int], list[float], list[str]]:
    sizes: list[int] = []
    seconds: list[float] = []
    said: list[str] = []
    contender.start()
    try:
        output: list[dict[str, Any]] = []
        for turn in range(turns):
            items = _next_input(turn, output)
            before = bytes_received()
            started = time.perf_counter()
            output = contender.turn(items)
            seconds.append(time.perf_counter() - started)
            sizes.append(bytes_received() - before)
            said.append(_text(output))
    finally:
        contender.stop()
    return sizes, seconds, said


def run(
    emulator: Any,
    turns: int = 20,
    *,
    repeats: int = 3,
    contenders: tuple[str, ...] = ("oaiws_conversation", "naive_pool", "openai_http"),
) -> dict[str, Any]:
    """Run the tool loop for each contender on a started emulator (``Emulator`` or
    ``EmulatorProcess``; set its ``input_cost_per_kb`` for a realistic server).

    Returns ``{"turns", "repeats", "contenders": {name: {"bytes_per_turn",
    "ms_per_turn", "total_bytes", "total_ms", "mean_ms_per_turn"}}, "ratios": {name:
    {"bytes", "time"}}}``; ratios are each contender's totals over the conversation's.
    Raises ``AssertionError`` if the contenders' answers differ.
    """
    verify: Any = emulator.ca_path or True
    client = oaiws.Client(
        api_key=emulator.api_key, base_url=emulator.base_url, verify=verify, max_connections=4
    )
    http: Optional[_OpenAIHTTP] = None
    available: dict[str, Any] = {
        "oaiws_conversation": lambda: _Conversation(client),
        "naive_pool": lambda: _NaivePool(client),
        "openai_http": lambda: http,
    }
    results: dict[str, Any] = {}
    reference: Optional[list[str]] = None
    try:
        if "openai_http" in contenders:
            http = _OpenAIHTTP(emulator)
        # Handshakes and first-use costs are paid before anything is measured.
        client.create_response(model=MODEL, input="warm up", store=False)
        if http is not None:
            http.start()
            http.turn([{"role": "user", "content": "warm up"}])

        def bytes_received() -> int:
            return int(emulator.stats()["bytes_received"])

        for name in contenders:
            contender = available[name]()
            runs = [_one_run(contender, turns, bytes_received) for _ in range(repeats)]
            sizes, _, said = runs[0]
            if reference is None:
                reference = said
            assert said == reference, f"{name} answered differently from {contenders[0]}"
            per_turn = [statistics.median(r[1][t] for r in runs) * 1000 for t in range(turns)]
            results[name] = {
                "bytes_per_turn": sizes,
                "ms_per_turn": [round(ms, 3) for ms in per_turn],
                "total_bytes": sum(sizes),
                "total_ms": round(sum(per_turn), 3),
                "mean_ms_per_turn": round(sum(per_turn) / turns, 3),
            }
    finally:
        client.close()
        if http is not None:
            http.close()
    base = results[contenders[0]]
    ratios = {
        name: {
            "bytes": round(figures["total_bytes"] / base["total_bytes"], 2),
            "time": round(figures["total_ms"] / base["total_ms"], 2),
        }
        for name, figures in results.items()
        if name != contenders[0]
    }
    return {"turns": turns, "repeats": repeats, "contenders": results, "ratios": ratios}


def format_table(result: dict[str, Any]) -> str:
    """Per-turn bytes and times side by side, then the totals and the ratios."""
    names = list(result["contenders"])
    figures = [result["contenders"][name] for name in names]
    head = "turn " + "".join(f"{n + ' B':>24}" for n in names)
    head += "".join(f"{n + ' ms':>24}" for n in names)
    lines = [head]
    for turn in range(result["turns"]):
        row = f"{turn + 1:>4} " + "".join(f"{f['bytes_per_turn'][turn]:>24,}" for f in figures)
        row += "".join(f"{f['ms_per_turn'][turn]:>24.2f}" for f in figures)
        lines.append(row)
    total = "sum  " + "".join(f"{f['total_bytes']:>24,}" for f in figures)
    total += "".join(f"{f['total_ms']:>24.2f}" for f in figures)
    lines.append(total)
    lines.append("")
    for name, ratio in result["ratios"].items():
        lines.append(
            f"{name} / {names[0]}: {ratio['bytes']:.2f}x bytes sent, {ratio['time']:.2f}x time"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--input-cost-per-kb",
        type=float,
        default=0.002,
        help="seconds the emulator spends per KB of context it must read (default 0.002)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    with EmulatorProcess(tls=True, input_cost_per_kb=args.input_cost_per_kb) as emulator:
        result = run(emulator, args.turns, repeats=args.repeats)
    result["input_cost_per_kb"] = args.input_cost_per_kb
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{args.turns}-turn store=false tool loop, TLS, input cost "
        f"{args.input_cost_per_kb * 1000:g} ms/KB, median of {args.repeats} runs; "
        f"python {sys.version.split()[0]}"
    )
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
