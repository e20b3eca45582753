"""A conversation saved as plain JSON and resumed elsewhere answers as if never interrupted:
by hydration from storage (``store=True``) or by replaying its transcript (``store=False``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

import oaiws
from oaiws import ConfigurationError
from oaiws.testing import Emulator

TURNS = [f"turn {n}: tell me more about pools" for n in range(6)]


def answers_uninterrupted(emulator: Emulator, **defaults: Any) -> list[str]:
    client = oaiws.Client(api_key=emulator.api_key, base_url=emulator.base_url)
    with client, client.conversation(**defaults) as conv:
        return [conv.send(text).output_text for text in TURNS]


@pytest.mark.parametrize("store", [True, False])
def test_a_conversation_resumed_from_json_in_a_fresh_client_answers_the_same(
    oaiws_emulator: Emulator, store: bool
) -> None:
    defaults = {"model": "gpt-test", "store": store, "instructions": "Be brief."}
    expected = answers_uninterrupted(oaiws_emulator, **defaults)
    saved: Any = None
    got: list[str] = []
    for text in TURNS:
        # Every turn in a new client, as in another worker process: no connection holds the
        # chain, so it is hydrated from storage or replayed from the saved transcript.
        with oaiws.Client(api_key=oaiws_emulator.api_key, base_url=oaiws_emulator.base_url) as c:
            conv = c.conversation(state=json.loads(saved)) if saved else c.conversation(**defaults)
            with conv:
                got.append(conv.send(text).output_text)
                saved = json.dumps(conv.state())
    assert got == expected
    state = json.loads(saved)
    assert state["defaults"] == defaults and state["version"] == 1
    assert ("transcript" in state) is (not store)
    stats = oaiws_emulator.stats()
    if store:  # every resumed turn continued from storage
        assert stats["hydrations"] >= len(TURNS) - 1
    else:  # every resumed turn replayed at once: the server was never asked for a lost chain
        assert stats["previous_response_not_found"] == 0


def test_the_state_is_small_with_storage_and_grows_with_the_transcript_without(
    oaiws_emulator: Emulator,
) -> None:
    sizes: dict[bool, list[int]] = {True: [], False: []}
    with oaiws.Client(api_key=oaiws_emulator.api_key, base_url=oaiws_emulator.base_url) as client:
        for store in (True, False):
            with client.conversation(model="gpt-test", store=store) as conv:
                for n in range(20):
                    conv.send(f"question {n}")
                    sizes[store].append(len(json.dumps(conv.state())))
    assert max(sizes[True]) - min(sizes[True]) < 10  # the id changes, nothing accumulates
    assert max(sizes[True]) < 200
    assert sizes[False][-1] > 10 * sizes[False][0]  # the transcript: every turn's items


def test_a_resumed_chain_the_server_lost_fails_instead_of_replaying_half(
    oaiws_emulator: Emulator,
) -> None:
    with oaiws.Client(api_key=oaiws_emulator.api_key, base_url=oaiws_emulator.base_url) as client:
        with client.conversation(model="gpt-test") as conv:
            conv.send("hello")
            state = conv.state()
        state["last_response_id"] = "resp_the_server_never_saw"
        resumed = client.conversation(state=state)
        with pytest.raises(oaiws.PreviousResponseNotFoundError):
            resumed.send("and then?")
        with pytest.raises(ConfigurationError, match="resumed without its transcript"):
            resumed.state(transcript=True)
        assert "transcript" not in resumed.state()


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("text", "state must be a dict"),
        ({"version": 2, "defaults": {"model": "m"}}, "version 2"),
        ({"version": 1, "defaults": []}, "defaults"),
        ({"version": 1, "defaults": {"model": "m"}, "last_response_id": 5}, "last_response_id"),
        ({"version": 1, "defaults": {"model": "m"}, "transcript": "x"}, "transcript"),
        ({"version": 1, "defaults": {"model": "m"}, "extra": 1}, "unknown keys"),
        ({"version": 1, "defaults": {}}, "model"),
    ],
)
def test_a_bad_state_is_refused_before_anything_is_sent(
    oaiws_emulator: Emulator, state: Any, message: str
) -> None:
    with oaiws.Client(api_key=oaiws_emulator.api_key, base_url=oaiws_emulator.base_url) as client:
        with pytest.raises(ConfigurationError, match=message):
            client.conversation(state=state)
        with pytest.raises(ConfigurationError, match="pass state= alone"):
            client.conversation(state={"version": 1, "defaults": {"model": "m"}}, model="m")
    assert oaiws_emulator.stats()["requests"] == 0


def test_warming_up_a_conversation_resumed_without_its_transcript_keeps_its_context(
    oaiws_emulator: Emulator,
) -> None:
    options = {"api_key": oaiws_emulator.api_key, "base_url": oaiws_emulator.base_url}
    first = oaiws.Client(**options)
    with first, first.conversation(model="gpt-test", store=True) as conv:
        conv.send("my name is Bob")
        state = conv.state()
        expected = conv.send("what is my name?").output_text
    later = oaiws.Client(**options)
    with later, later.conversation(state=state) as resumed:
        resumed.prepare()
        assert resumed.send("what is my name?").output_text == expected


def test_the_state_is_refused_during_a_turn(oaiws_emulator: Emulator) -> None:
    client = oaiws.Client(api_key=oaiws_emulator.api_key, base_url=oaiws_emulator.base_url)
    with client, client.conversation(model="gpt-test") as conv:
        stream = conv.stream("hello")
        next(stream)  # the turn is under way: its outcome is not known yet
        with pytest.raises(oaiws.ConversationBusyError):
            conv.state()
        stream.until_done()
        assert conv.state()["last_response_id"] == stream.response.id  # type: ignore[union-attr]
