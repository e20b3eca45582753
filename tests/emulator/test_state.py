"""Warm-up, queueing, the connection cache, the store, hydration and determinism."""

from __future__ import annotations

import time

from .conftest import Client, final, text_of


def test_warm_up_returns_a_chainable_id_without_output(emu, connect):
    client = connect()
    events = client.run(input="context to prepare", generate=False, instructions="sys")
    assert [e["type"] for e in events] == ["response.created", "response.completed"]
    warm = final(events)
    assert warm["status"] == "completed" and warm["output"] == []
    follow = client.run(previous_response_id=warm["id"], input="question")
    assert final(follow)["status"] == "completed"
    assert emu.stats()["cache_hits"] == 1 and emu.stats()["warmups"] == 1


def test_a_second_create_in_flight_is_queued_and_served_after(connect):
    client = connect()
    slow = {"emulator_deltas": "5", "emulator_delta_delay_ms": "20"}
    client.create(input="first", metadata=slow)
    client.create(input="second")
    events = [client.event() for _ in range(2 * 16 - 3)]
    created = [e["response"]["id"] for e in events if e["type"] == "response.created"]
    completed = [i for i, e in enumerate(events) if e["type"] == "response.completed"]
    assert len(created) == 2 and len(completed) == 2
    first_done = completed[0]
    assert all(e["type"] != "response.created" for e in events[1:first_done]), "interleaved"
    assert events[first_done]["response"]["id"] == created[0]


def _transcript_turns(client, **extra):
    """Three chained turns; returns (texts, responses, inputs)."""
    texts, responses, previous = [], [], None
    inputs = ["one", "two", "three"]
    for text in inputs:
        fields = {"input": text, "instructions": "sys", **extra}
        if previous:
            fields["previous_response_id"] = previous
        events = client.run(**fields)
        texts.append(text_of(events))
        responses.append(final(events))
        previous = final(events)["id"]
    return texts, responses


def test_cached_hydrated_and_replayed_continuations_produce_the_same_text(emu, connect):
    cached_client = connect()
    texts, responses = _transcript_turns(cached_client)
    assert emu.stats()["cache_hits"] == 2

    # Hydrated: the same continuation on another connection loads the chain from the store.
    other = connect()
    hydrated = other.run(previous_response_id=responses[1]["id"], input="three", instructions="sys")
    assert text_of(hydrated) == texts[2]
    assert emu.stats()["hydrations"] == 1

    # Replay: the whole transcript, without previous_response_id.
    history = []
    for user, response in zip(["one", "two"], responses[:2]):
        history.append({"role": "user", "content": user})
        history.extend(response["output"])
    replay = connect().run(
        input=[*history, {"role": "user", "content": "three"}], instructions="sys"
    )
    assert text_of(replay) == texts[2]
    # ... even with ids and statuses stripped, and content given as typed parts.
    stripped = [{k: v for k, v in item.items() if k not in ("id", "status")} for item in history]
    replay2 = connect().run(
        input=[*stripped, {"role": "user", "content": [{"type": "input_text", "text": "three"}]}],
        instructions="sys",
    )
    assert text_of(replay2) == texts[2]
    assert len({texts[0], texts[1], texts[2]}) == 3


def test_tool_loop_replay_matches_the_cached_continuation(connect):
    tool = {
        "type": "function",
        "name": "lookup",
        "parameters": {"type": "object", "properties": {}},
    }
    client = connect()
    call = final(client.run(input="please lookup", tools=[tool]))
    output = {
        "type": "function_call_output",
        "call_id": call["output"][0]["call_id"],
        "output": "42",
    }
    cached = client.run(previous_response_id=call["id"], input=[output], tools=[tool])
    replay = connect().run(
        input=[{"role": "user", "content": "please lookup"}, *call["output"], output], tools=[tool]
    )
    assert text_of(cached) == text_of(replay)
    assert "42" in text_of(cached)


def test_store_false_cannot_be_hydrated(emu, connect):
    client = connect()
    response = final(client.run(input="secret", store=False))
    assert (
        final(client.run(previous_response_id=response["id"], input="next"))["status"]
        == "completed"
    )
    error = connect().run(previous_response_id=response["id"], input="next")[-1]
    assert error["type"] == "error" and error["status"] == 400
    assert error["error"] == {
        "type": "invalid_request_error",
        "code": "previous_response_not_found",
        "message": f"Previous response with id '{response['id']}' not found.",
        "param": "previous_response_id",
    }
    unknown = connect().run(previous_response_id="resp_unknown", input="x")[-1]
    assert unknown["error"]["code"] == "previous_response_not_found"
    stats = emu.stats()
    assert stats["previous_response_not_found"] == 2 and stats["cache_misses"] == 2


def test_the_cache_dies_with_the_connection(emu, connect):
    client = connect()
    response = final(client.run(input="x", store=False))
    client.close()
    error = connect().run(previous_response_id=response["id"], input="y")[-1]
    assert error["error"]["code"] == "previous_response_not_found"


def test_a_failed_continuation_evicts_the_id_from_the_cache(emu, connect):
    client = connect()
    first = final(client.run(input="x", store=False))
    failed = client.run(
        previous_response_id=first["id"], input="y", metadata={"emulator_outcome": "failed"}
    )
    assert failed[-1]["type"] == "response.failed"
    error = client.run(previous_response_id=first["id"], input="y")[-1]
    assert error["error"]["code"] == "previous_response_not_found"


def test_hydration_delay_and_input_cost(oaiws_emulator_factory, connect):
    emu = oaiws_emulator_factory(hydration_delay=0.2, input_cost_per_kb=0.05)
    client = Client(emu.websocket_url)
    try:
        big = "word " * 800  # about 4 KB of context
        first = final(client.run(input=big))
        start = time.monotonic()
        client.run(previous_response_id=first["id"], input="short")
        cached_time = time.monotonic() - start
        other = Client(emu.websocket_url)
        start = time.monotonic()
        other.run(previous_response_id=first["id"], input="short")
        hydrated_time = time.monotonic() - start
        other.close()
    finally:
        client.close()
    assert cached_time < 0.1
    assert hydrated_time >= 0.2 + 0.05 * 3.9
    assert emu.stats()["input_kb_processed"] > 7
