"""``Conversation`` over real sockets: chaining, replay, interruptions, tools, the thread rule."""

from __future__ import annotations

import gc
import importlib.util
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest

import oaiws
from oaiws.conversation import _replayable
from oaiws.testing import Emulator, Fault, expected_text

ClientFactory = Callable[..., oaiws.Client]
INSTRUCTIONS = "Answer briefly."
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tool_loop.py"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def converse(client: oaiws.Client, **defaults: Any) -> oaiws.Conversation:
    defaults.setdefault("model", "gpt-test")
    defaults.setdefault("instructions", INSTRUCTIONS)
    defaults.setdefault("store", False)
    return client.conversation(**defaults)


def answer_after(history: list[dict[str, Any]], question: str) -> str:
    """The undisturbed chain's answer, from the emulator's model definition."""
    return expected_text(question, instructions=INSTRUCTIONS, history=history)


# -- chaining ---------------------------------------------------------------------------


def test_turns_continue_from_the_connection_cache_with_only_their_new_items(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    conv = converse(client_for(oaiws_emulator))
    first = conv.send("Hello there")
    assert first.output_text == answer_after([], "Hello there")
    assert conv.last_response_id == first.id
    second = conv.send("And then?")
    assert second.output_text == answer_after(conv.history[:2], "And then?")
    history = conv.history
    assert [item.get("role") for item in history] == ["user", "assistant"] * 2
    assert history[0] == {"role": "user", "content": "Hello there"}
    assert history[1] == first["output"][0], "output items are kept as the server sent them"
    stats = oaiws_emulator.stats()
    assert (stats["cache_hits"], stats["handshakes"]) == (1, 1)
    usage = second.usage
    assert usage is not None and usage.input_tokens_details.cached_tokens > 0
    assert usage.input_tokens < 2 * usage.input_tokens_details.cached_tokens + 20


def test_a_lost_connection_is_replaced_by_a_replay_that_answers_the_same(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator)
    undisturbed = converse(client)
    disturbed = converse(client)
    for question in ("One?", "Two?", "Three?"):
        expected = undisturbed.send(question).output_text
        undisturbed.close()
        oaiws_emulator.close_all_connections(code=1001)
        assert disturbed.send(question).output_text == expected
    assert [item["role"] for item in disturbed.history] == ["user", "assistant"] * 3
    stats = oaiws_emulator.stats()
    assert stats["previous_response_not_found"] == 0, "the replay was decided, not attempted"
    assert client.pool_stats()["replays"] >= 2


def test_previous_response_not_found_is_replayed_on_the_same_connection_at_once(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator, max_retries=0)
    conv = converse(client)
    conv.send("Remember this.")
    # The server forgot the chain although the connection is the same one.
    oaiws_emulator.inject(Fault(error_code="previous_response_not_found"))
    again = conv.send("What did I say?")
    assert again.output_text == answer_after(conv.history[:2], "What did I say?")
    stats = client.pool_stats()
    assert (stats["replays"], stats["retries"], stats["connections_opened"]) == (1, 0, 1)


def test_a_stored_conversation_continues_anywhere_through_the_store(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator)
    conv = converse(client, store=True)
    conv.send("Stored one.")
    oaiws_emulator.close_all_connections()
    second = conv.send("Stored two.")
    assert second.output_text == answer_after(conv.history[:2], "Stored two.")
    assert oaiws_emulator.stats()["hydrations"] == 1
    assert client.pool_stats()["replays"] == 0


def test_prepare_warms_the_connection_the_first_turn_continues_on(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    conv = converse(client_for(oaiws_emulator), tools=[WEATHER])
    warm = conv.prepare()
    assert warm.status == "completed" and conv.last_response_id == warm.id
    assert conv.history == []
    first = conv.send("Hello")
    assert first.output_text == answer_after([], "Hello")
    stats = oaiws_emulator.stats()
    assert (stats["warmups"], stats["cache_hits"], stats["handshakes"]) == (1, 1, 1)


def test_close_gives_the_held_connection_back_and_the_conversation_goes_on(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator)
    with converse(client) as conv:
        conv.send("Hi")
        assert client.pool_stats()["connections_held"] == 1
    assert client.pool_stats()["connections_held"] == 0
    assert conv.send("Still there?").output_text == answer_after(conv.history[:2], "Still there?")


# -- streams and interruptions ----------------------------------------------------------


def test_a_streamed_turn_joins_the_transcript_before_its_last_event(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    conv = converse(client_for(oaiws_emulator))
    stream = conv.stream("Stream it")
    assert oaiws_emulator.stats()["requests"] == 0, "nothing is sent before the first next()"
    text = ""
    for event in stream:
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            assert len(conv.history) == 2
    assert text == answer_after([], "Stream it")
    assert stream.response is not None and conv.last_response_id == stream.response.id


def test_an_interrupted_stream_leaves_the_conversation_as_it_was(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    conv = converse(client_for(oaiws_emulator))
    conv.send("First")
    before = (conv.history, conv.last_response_id)
    oaiws_emulator.inject(Fault(close_after_events=5, close_code=None))
    seen = []
    with pytest.raises(oaiws.StreamInterruptedError):
        for event in conv.stream("Second"):
            seen.append(event)
    assert seen, "the failure came after events reached the caller"
    assert (conv.history, conv.last_response_id) == before
    retry = conv.send("Second")
    assert retry.output_text == answer_after(before[0], "Second")


def test_leaving_a_stream_early_drops_the_turn(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    conv = converse(client_for(oaiws_emulator))
    conv.send("First")
    history = conv.history
    with conv.stream("Second") as stream:
        next(stream)
    assert conv.history == history
    assert conv.send("Third").output_text == answer_after(history, "Third")


def test_a_failed_turn_is_returned_and_left_out_of_the_transcript(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    conv = converse(client_for(oaiws_emulator))
    conv.send("First")
    history = conv.history
    failed = conv.send("Fail", metadata={"emulator_outcome": "failed"})
    assert failed.status == "failed"
    assert conv.history == history
    assert conv.send("Next").output_text == answer_after(history, "Next")


def test_an_incomplete_turn_is_kept_and_continued(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    conv = converse(client_for(oaiws_emulator))
    short = conv.send("Be long", max_output_tokens=3)
    assert short.status == "incomplete" and len(conv.history) == 2
    assert conv.send("Go on").output_text == answer_after(conv.history[:2], "Go on")
    assert oaiws_emulator.stats()["cache_hits"] == 1


# -- tools ------------------------------------------------------------------------------


def test_a_tool_loop_sends_function_outputs_and_reads_the_answer(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    conv = converse(client_for(oaiws_emulator), tools=[WEATHER])
    asked = conv.send("Please call get_weather for Paris")
    (call,) = asked.function_calls
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "example city"}
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
    answer = conv.send(output)
    assert answer.output_text.startswith("Tool result: sunny.")
    kinds = [item.get("type", "message") for item in conv.history]
    assert kinds == ["message", "function_call", "function_call_output", "message"]
    assert oaiws_emulator.stats()["cache_hits"] == 1


def test_a_per_turn_override_applies_to_that_turn_only(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    conv = converse(client_for(oaiws_emulator), tools=[WEATHER])
    forced = conv.send("Anything", tool_choice="required")
    assert forced.function_calls
    assert conv.defaults.get("tool_choice") is None


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tool_loop_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tool_loop_example_runs_end_to_end(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    example = load_example()
    client = client_for(oaiws_emulator)
    out = io.StringIO()
    conv = example.run(client, out)
    kinds = [item.get("type", "message") for item in conv.history]
    assert (
        kinds == ["message", "function_call", "function_call_output", "message"] + ["message"] * 2
    )
    printed = out.getvalue()
    assert 'Tool result: {"city": "example city", "forecast": "sunny"' in printed
    stats = oaiws_emulator.stats()
    assert (stats["warmups"], stats["cache_hits"], stats["handshakes"]) == (1, 3, 1)


def test_the_tool_loop_example_runs_as_a_script() -> None:
    pytest.importorskip("aiohttp")
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--emulator"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Tool result:" in result.stdout and "6 items in the transcript" in result.stdout


# -- the thread rule and validation -----------------------------------------------------


def test_a_second_thread_in_the_middle_of_a_turn_gets_a_clear_error(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    conv = converse(client_for(oaiws_emulator))
    stream = conv.stream("Long answer")
    next(stream)  # the turn is in progress in this thread
    caught: list[BaseException] = []

    def intrude() -> None:
        try:
            conv.send("Me too")
        except BaseException as error:
            caught.append(error)

    thread = threading.Thread(target=intrude)
    thread.start()
    thread.join(10)
    assert len(caught) == 1 and isinstance(caught[0], oaiws.ConversationBusyError)
    assert "one thread at a time" in str(caught[0])
    stream.until_done()
    assert len(conv.history) == 2
    conv.send("Now me")  # the turn is over: the conversation is free again
    assert len(conv.history) == 4


def test_a_busy_conversation_refuses_a_stream_at_its_first_event(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    conv = converse(client_for(oaiws_emulator))
    first = conv.stream("One")
    next(first)
    second = conv.stream("Two")
    with pytest.raises(oaiws.ConversationBusyError):
        next(second)
    first.until_done()
    assert conv.send("Three").status == "completed", "the refused stream released nothing"


@pytest.mark.parametrize(
    ("defaults", "match"),
    [
        ({"input": "x"}, "input is managed"),
        ({"previous_response_id": "resp_1"}, "previous_response_id is managed"),
        ({"generate": False}, "prepare"),
        ({"model": ""}, "model"),
        ({"tools": "nope"}, "tools"),
    ],
)
def test_bad_defaults_fail_at_construction(
    oaiws_emulator: Emulator, client_for: ClientFactory, defaults: dict[str, Any], match: str
) -> None:
    client = client_for(oaiws_emulator)
    fields = {"model": "gpt-test", **defaults}
    with pytest.raises(oaiws.ConfigurationError, match=match):
        client.conversation(**fields)
    assert oaiws_emulator.stats()["handshakes"] == 0


@pytest.mark.parametrize("bad", [42, [], [42], None])
def test_bad_input_fails_before_anything_is_sent(
    oaiws_emulator: Emulator, client_for: ClientFactory, bad: Any
) -> None:
    conv = converse(client_for(oaiws_emulator))
    with pytest.raises(oaiws.ConfigurationError):
        conv.send(bad)
    with pytest.raises(oaiws.ConfigurationError):
        conv.stream(bad)
    with pytest.raises(oaiws.ConfigurationError, match="previous_response_id"):
        conv.send("x", previous_response_id="resp_1")
    assert oaiws_emulator.stats()["requests"] == 0


def test_history_is_a_copy_and_mixed_input_lists_are_accepted(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    conv = converse(client_for(oaiws_emulator))
    conv.send(["First part", {"role": "user", "content": "second part"}])
    history = conv.history
    history[0]["content"] = "tampered"
    history.clear()
    assert conv.history[0] == {"role": "user", "content": "First part"}
    assert len(conv.history) == 3
    assert "gpt-test" in repr(conv) and "items=3" in repr(conv)


def test_a_closed_client_refuses_new_conversations(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator)
    conv = converse(client)
    client.close()
    with pytest.raises(oaiws.ClientClosedError):
        client.conversation(model="gpt-test")
    with pytest.raises(oaiws.ClientClosedError):
        conv.send("hello")
    conv.close()  # nothing to give back, and no error


def test_replayed_items_leave_out_what_a_store_false_server_cannot_find() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "hi", "annotations": []}],
    }
    reasoning = {"id": "rs_1", "type": "reasoning", "summary": []}
    sealed = {**reasoning, "encrypted_content": "gAAA"}
    assert _replayable(message, False) == {k: v for k, v in message.items() if k != "id"}
    assert _replayable(reasoning, False) is None
    assert _replayable(sealed, False) == {k: v for k, v in sealed.items() if k != "id"}
    assert _replayable(message, True) is message
    assert _replayable(reasoning, None) is reasoning


def test_the_benchmark_scenario_runs_and_its_contenders_agree(
    oaiws_emulator_factory: Callable[..., Emulator],
) -> None:
    pytest.importorskip("openai")
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "conversation.py"
    spec = importlib.util.spec_from_file_location("conversation_benchmark", path)
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    emu = oaiws_emulator_factory(input_cost_per_kb=0.0005)

    result = benchmark.run(emu, turns=4, repeats=1)  # raises if the answers differ

    figures = result["contenders"]
    assert set(figures) == {"oaiws_conversation", "naive_pool", "openai_http"}
    ours = figures["oaiws_conversation"]["bytes_per_turn"]
    assert ours[0] == figures["naive_pool"]["bytes_per_turn"][0], "turn 1 has nothing to chain"
    assert ours[3] < figures["naive_pool"]["bytes_per_turn"][3] / 2
    assert result["ratios"]["openai_http"]["bytes"] > 1.5
    assert "naive_pool / oaiws_conversation" in benchmark.format_table(result)


def test_a_dropped_conversation_gives_its_held_connection_back_without_taking_a_lock(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    # A finalizer runs wherever the garbage collector happens to run: here, inside the
    # statistics' lock of the very thread that drops the conversation. It must not wait for
    # that lock (or any other), and the hold must still end at the pool's next step.
    client = client_for(oaiws_emulator, max_connections=1, affinity_wait=5.0)
    conv = client.conversation(model="m", store=False)
    conv.send("one")  # its connection is now held for its next turn, for up to 5 s
    conv.cycle = conv  # type: ignore[attr-defined]  # only the garbage collector frees it
    del conv
    stats_lock = client._runtime.pool.counters._lock  # the lock a careless finalizer would take
    collected = threading.Event()

    def collect_inside_the_lock() -> None:
        with stats_lock:
            gc.collect()
        collected.set()

    threading.Thread(target=collect_inside_the_lock, daemon=True).start()
    assert collected.wait(5), "the finalizer waited for a lock its own thread held"
    started = time.monotonic()
    assert client.create_response(model="m", input="two").status == "completed"
    assert time.monotonic() - started < 2.0, "the dropped conversation's hold was still kept"
    assert client.pool_stats()["affinity_holds_released"] == 1
