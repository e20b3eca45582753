"""A tool loop on a ``Conversation``: the model asks for a function, we run it, it answers.

Each turn after the first sends only its new items (the function's output) with
``previous_response_id``, on the connection whose cache holds the conversation; with
``store=False`` nothing is kept on the server beyond that cache, and oaiws replays the
transcript by itself if the connection is lost. Run it against the embedded emulator::

    python examples/tool_loop.py --emulator

or against the real API (``OPENAI_API_KEY`` set, ``OAIWS_MODEL`` optional)::

    python examples/tool_loop.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, Optional

import oaiws
from oaiws.testing import Emulator  # starting one needs the extra: pip install 'oaiws[emulator]'

MODEL = os.environ.get("OAIWS_MODEL", "gpt-5.5")


def get_weather(city: str) -> dict[str, Any]:
    """The function the model may call (a real one would ask a weather service)."""
    return {"city": city, "forecast": "sunny", "celsius": 21}


FUNCTIONS: dict[str, Callable[..., Any]] = {"get_weather": get_weather}

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather forecast for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    }
]


def call_functions(response: oaiws.Response) -> list[dict[str, Any]]:
    """Run every function the response asks for; their outputs are the next turn's input."""
    outputs = []
    for call in response.function_calls:
        result = FUNCTIONS[call["name"]](**json.loads(call["arguments"]))
        outputs.append(
            {
                "type": "function_call_output",
                "call_id": call["call_id"],
                "output": json.dumps(result),
            }
        )
    return outputs


def ask(conv: oaiws.Conversation, question: str, out: Any = sys.stdout) -> str:
    """One user question, through as many tool calls as the model wants; returns the answer
    (and prints it: streamed when it follows a function's output)."""
    out.write(f"> {question}\n")
    response = conv.send(question)
    if not response.function_calls:
        out.write(response.output_text + "\n")
    while response.function_calls:
        # Stream the turn that carries the functions' outputs, printing text as it comes.
        stream = conv.stream(call_functions(response))
        for event in stream:
            if event.type == "response.output_text.delta":
                out.write(event.delta)
        out.write("\n")
        finished = stream.response
        assert finished is not None  # the loop ended at the terminal event
        response = finished
    return response.output_text


def run(client: oaiws.Client, out: Any = sys.stdout) -> oaiws.Conversation:
    """The whole example: a warmed-up conversation, two questions, the transcript."""
    with client.conversation(
        model=MODEL,
        instructions="You answer questions about the weather. Use get_weather.",
        tools=TOOLS,
        store=False,
    ) as conv:
        conv.prepare()  # the first turn then starts on a connection that is ready
        ask(conv, "What is the weather in Paris? Use get_weather.", out)
        ask(conv, "And should I take an umbrella?", out)
    return conv


@contextmanager
def _client(emulator: bool) -> Iterator[oaiws.Client]:
    if not emulator:
        with oaiws.Client() as client:
            yield client
        return
    with Emulator() as emu, oaiws.Client(api_key=emu.api_key, base_url=emu.base_url) as client:
        yield client


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="a tool loop on an oaiws Conversation")
    parser.add_argument("--emulator", action="store_true", help="run on the embedded emulator")
    args = parser.parse_args(argv)
    with _client(args.emulator) as client:
        conv = run(client)
        print(f"{len(conv.history)} items in the transcript; pool: {client.pool_stats()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
