"""A server that lies: every hostile frame of the emulator, with both JSON backends, through
both ways of making a request. The client raises the documented exception or tolerates the
lie; it never crashes, hangs, leaks a raw exception or allocates what a frame claims.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from typing import Any, Callable

import pytest

import oaiws
from oaiws import _json
from oaiws.testing import HOSTILE_FRAMES, Emulator, Fault

# The outcome each preset must have (docs/emulator.md, "Hostile frames").
REFUSED = {
    "not_json",
    "invalid_utf8",
    "not_an_object",
    "no_type",
    "type_not_a_string",
    "deep_nesting",
    "negative_index",
    "index_not_an_integer",
    "oversized_frame",
    "fragment_flood",
    "terminal_without_response",
}
TOLERATED = {
    "huge_index",
    "wrong_field_types",
    "output_not_a_list",
    "status_not_a_string",
    "deep_output_item",
}
ERROR_EVENT = {"error_not_an_object"}

# Small enough that the flood is refused after 16 fragments; the default is tested apart.
MESSAGE_LIMIT = 1024 * 1024


def test_the_matrix_covers_every_preset() -> None:
    assert set(HOSTILE_FRAMES) == REFUSED | TOLERATED | ERROR_EVENT


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture(params=["orjson", "json"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Decode frames with orjson or with the standard library (the connection decodes through
    ``_json.loads``, looked up at every frame)."""
    if request.param == "orjson":
        pytest.importorskip("orjson")
        monkeypatch.setattr(_json, "loads", __import__("orjson").loads)
    else:
        monkeypatch.setattr(_json, "loads", _json._std_loads)
    return str(request.param)


def _client(emulator: Emulator, **options: Any) -> oaiws.Client:
    options.setdefault("max_message_size", MESSAGE_LIMIT)
    return oaiws.Client(api_key=emulator.api_key, base_url=emulator.base_url, **options)


def _stream(client: oaiws.Client) -> Any:
    """Iterate a stream to its end: its response, or the exception it raised."""
    stream = client.generate_response(model="gpt-test", input="hello")
    try:
        for _ in stream:
            pass
    except Exception as error:
        return error
    return stream.response


def _create(client: oaiws.Client) -> Any:
    try:
        return client.create_response(model="gpt-test", input="hello")
    except Exception as error:
        return error


WAYS: dict[str, Callable[[oaiws.Client], Any]] = {
    "generate_response": _stream,
    "create_response": _create,
}


@pytest.mark.parametrize("way", sorted(WAYS))
@pytest.mark.parametrize("preset", sorted(HOSTILE_FRAMES))
def test_a_lying_server_never_crashes_the_client(
    emulator: Emulator, backend: str, preset: str, way: str
) -> None:
    emulator.reset_stats()
    with _client(emulator, max_retries=2) as client:
        emulator.inject(Fault(hostile_frame=preset))
        outcome = WAYS[way](client)
        if preset in REFUSED:
            assert type(outcome) is oaiws.ProtocolError, (preset, backend, outcome)
            # After response.created had arrived: the exception carries it, the request
            # is not retried, and the connection is closed, never reused.
            assert outcome.events and outcome.events[0].type == "response.created"
            assert outcome.response_id == outcome.events[0].response.id
            assert outcome.request_id is not None
            assert emulator.stats()["requests"] == 1
            stats = client.pool_stats()
            assert stats["connections_open"] == 0 and stats["connections_discarded"] == 1
        elif preset in ERROR_EVENT:
            assert type(outcome) is oaiws.APIStatusError, (preset, backend, outcome)
            assert outcome.status_code is None and outcome.events
        else:
            assert isinstance(outcome, oaiws.Response), (preset, backend, outcome)
            assert outcome.status == (None if preset == "status_not_a_string" else "completed")
        # Whatever happened, the client goes on serving requests.
        after = client.create_response(model="gpt-test", input="again")
        assert after.status == "completed" and after.output_text


def test_tolerated_lies_still_build_the_response_from_what_arrived(
    emulator: Emulator, backend: str
) -> None:
    with _client(emulator) as client:
        emulator.inject(Fault(hostile_frame="wrong_field_types"))
        response = client.create_response(model="gpt-test", input="hello")
        assert response.output_text == "kept", "fields of the wrong type are ignored"

        emulator.inject(Fault(hostile_frame="huge_index"))
        tracemalloc.start()
        try:
            response = client.create_response(model="gpt-test", input="hello")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # Everything the events said lands at output index 2**62, stored in a few bytes.
        (item,) = response.output
        assert item["arguments"] == "{}"
        assert [part["text"] for part in item["content"]] == ["x"]
        assert peak < 4 * 1024 * 1024, peak

        emulator.inject(Fault(hostile_frame="output_not_a_list"))
        assert client.create_response(model="gpt-test", input="hello").output == []


@pytest.mark.parametrize("way", ["send", "stream"])
def test_a_conversation_refuses_an_output_too_deep_to_keep_and_goes_on(
    emulator: Emulator, backend: str, way: str
) -> None:
    # A transcript deep-copies its items and re-encodes them in every replay: an item nested
    # past 128 levels is refused, the transcript stays as it was, and the chain goes on.
    with _client(emulator, affinity_wait=30.0) as client:
        conv = client.conversation(model="gpt-test")
        first = conv.send("one")
        before = conv.history
        emulator.inject(Fault(hostile_frame="deep_output_item"))
        with pytest.raises(oaiws.ProtocolError, match="nested deeper than 128 levels") as caught:
            if way == "send":
                conv.send("two")
            else:
                for _ in conv.stream("two"):
                    pass
        assert caught.value.response_id is not None and caught.value.response_id != first.id
        assert conv.history == before and conv.last_response_id == first.id
        # The refused turn's connection is not held for it: another caller gets it at once.
        stats = client.pool_stats()
        assert stats["connections_held"] == 0 and stats["affinity_holds_released"] == 1
        again = conv.send("two")
        assert again.status == "completed" and conv.last_response_id == again.id
        assert conv.history[len(before)] == {"role": "user", "content": "two"}


def test_a_message_larger_than_the_limit_is_refused_before_it_is_read(
    emulator: Emulator,
) -> None:
    client = _client(emulator, max_message_size=4096)
    with client, pytest.raises(oaiws.ProtocolError, match="max_message_size=4096"):
        client.create_response(
            model="gpt-test", input="hello", metadata={"emulator_deltas": "2000"}
        )


def test_an_endless_fragmented_message_stops_at_the_default_limit(emulator: Emulator) -> None:
    # 64 MiB in 64 KiB fragments: reassembled in linear time, refused at the limit.
    with oaiws.Client(api_key=emulator.api_key, base_url=emulator.base_url) as client:
        emulator.inject(Fault(hostile_frame="fragment_flood"))
        with pytest.raises(oaiws.ProtocolError, match="max_message_size=67108864"):
            client.create_response(model="gpt-test", input="hello")


def test_max_message_size_is_validated() -> None:
    for bad in (0, 100, 4095, "big", 1.5, True):
        with pytest.raises(oaiws.ConfigurationError, match="max_message_size"):
            oaiws.Client(api_key="sk-x", max_message_size=bad)
    assert oaiws.Client(api_key="sk-x", max_message_size=4096).config.max_message_size == 4096
