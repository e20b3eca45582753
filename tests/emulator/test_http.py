"""The HTTP counterpart (JSON, SSE, REST on stored responses) and TLS."""

from __future__ import annotations

import json
import os
import ssl

import pytest
import requests

from oaiws.testing import Fault
from oaiws.testing._requests import RequestError

from .conftest import KEY, Client, final, text_of

AUTH = {"Authorization": f"Bearer {KEY}"}


def _sse(reply: requests.Response) -> list[dict]:
    events = []
    for block in reply.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        event = json.loads(lines["data"])
        assert lines["event"] == event["type"]
        events.append(event)
    return events


def test_post_json_and_stream_match_the_websocket_text(emu, connect):
    body = {"model": "m", "input": "hello", "instructions": "sys"}
    reply = requests.post(emu.base_url + "/responses", json=body, headers=AUTH, timeout=5)
    assert reply.status_code == 200 and reply.headers["x-request-id"].startswith("req_")
    response = reply.json()
    assert response["status"] == "completed"
    streamed = requests.post(
        emu.base_url + "/responses",
        json={**body, "stream": True},
        headers={"api-key": KEY},
        timeout=5,
    )
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = _sse(streamed)
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    ws_text = text_of(connect().run(**body))
    assert text_of(events) == response["output"][0]["content"][0]["text"] == ws_text


def test_http_continuation_hydrates_from_the_store(emu):
    first = requests.post(
        emu.base_url + "/responses", json={"model": "m", "input": "a"}, headers=AUTH, timeout=5
    ).json()
    second = requests.post(
        emu.base_url + "/responses",
        timeout=5,
        headers=AUTH,
        json={"model": "m", "input": "b", "previous_response_id": first["id"]},
    )
    assert second.status_code == 200 and emu.stats()["hydrations"] == 1
    missing = requests.post(
        emu.base_url + "/responses",
        timeout=5,
        headers=AUTH,
        json={"model": "m", "input": "b", "previous_response_id": "resp_nope", "stream": True},
    )
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "previous_response_not_found"


def test_errors_mid_stream_use_the_flat_shape(emu):
    emu.inject(Fault(error_code="server_error"))
    refused = requests.post(
        emu.base_url + "/responses",
        json={"model": "m", "input": "x", "stream": True},
        headers=AUTH,
        timeout=5,
    )
    assert refused.status_code == 500 and refused.json()["error"]["code"] == "server_error"
    emu.inject(Fault(error_code="rate_limit_exceeded", retry_after=3))
    limited = requests.post(
        emu.base_url + "/responses", json={"model": "m", "input": "x"}, headers=AUTH, timeout=5
    )
    assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
    flat = RequestError("boom", code="server_error").sse_event(4)
    assert flat == {
        "type": "error",
        "code": "server_error",
        "message": "boom",
        "param": None,
        "sequence_number": 4,
    }


def test_http_failed_incomplete_and_bad_bodies(emu):
    url = emu.base_url + "/responses"
    failed = requests.post(
        url,
        json={
            "model": "m",
            "input": "x",
            "stream": True,
            "metadata": {"emulator_outcome": "failed"},
        },
        headers=AUTH,
        timeout=5,
    )
    assert _sse(failed)[-1]["type"] == "response.failed"
    short = requests.post(
        url, json={"model": "m", "input": "x", "max_output_tokens": 2}, headers=AUTH, timeout=5
    ).json()
    assert short["status"] == "incomplete"
    bad = requests.post(url, data=b"{nope", headers=AUTH, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    stateless_background = requests.post(
        url, json={"model": "m", "background": True, "store": False}, headers=AUTH, timeout=5
    )
    assert stateless_background.status_code == 400
    plain_get = requests.get(url, headers=AUTH, timeout=5)
    assert plain_get.status_code == 405


def test_http_faults_drop_or_garble(emu):
    url = emu.base_url + "/responses"
    emu.inject(Fault(close_after_events=2, close_code=None))
    with pytest.raises(requests.exceptions.RequestException):
        requests.post(
            url, json={"model": "m", "input": "x", "stream": True}, headers=AUTH, timeout=5
        ).text
    emu.inject(Fault(malformed_frame=True))
    garbled = requests.post(url, json={"model": "m", "input": "x"}, headers=AUTH, timeout=5)
    with pytest.raises(ValueError):
        garbled.json()
    ok = requests.post(url, json={"model": "m", "input": "x"}, headers=AUTH, timeout=5)
    assert ok.json()["status"] == "completed"


def test_retrieve_delete_and_input_items(emu, connect):
    response = final(
        connect().run(
            input=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]
        )
    )
    url = f"{emu.base_url}/responses/{response['id']}"
    assert requests.get(url, headers=AUTH, timeout=5).json() == response
    items = requests.get(url + "/input_items", headers=AUTH, timeout=5).json()
    assert items["object"] == "list" and not items["has_more"]
    assert [i["content"][0]["text"] for i in items["data"]] == ["two", "one"]  # newest first
    ascending = requests.get(url + "/input_items?order=asc&limit=1", headers=AUTH, timeout=5).json()
    assert ascending["data"][0]["content"][0]["text"] == "one" and ascending["has_more"]
    deleted = requests.delete(url, headers=AUTH, timeout=5).json()
    assert deleted == {"id": response["id"], "object": "response.deleted", "deleted": True}
    gone = requests.get(url, headers=AUTH, timeout=5)
    assert gone.status_code == 404 and "not found" in gone.json()["error"]["message"]
    unstored = final(connect().run(input="x", store=False))
    assert (
        requests.get(
            f"{emu.base_url}/responses/{unstored['id']}", headers=AUTH, timeout=5
        ).status_code
        == 404
    )
    assert requests.get(url, timeout=5).status_code == 401


def test_tls_serves_wss_and_https_trusting_only_the_ca(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(tls=True)
    assert emu.base_url.startswith("https://") and emu.websocket_url.startswith("wss://")
    client = Client(emu.websocket_url, sslopt={"ca_certs": emu.ca_path})
    assert final(client.run(input="x"))["status"] == "completed"
    client.close()
    reply = requests.post(
        emu.base_url + "/responses",
        json={"model": "m", "input": "x"},
        headers=AUTH,
        verify=emu.ca_path,
        timeout=5,
    )
    assert reply.json()["status"] == "completed"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(emu.base_url + "/responses/x", timeout=5)  # not trusted by default
    with pytest.raises(ssl.SSLError):
        Client(emu.websocket_url, sslopt={"cert_reqs": ssl.CERT_REQUIRED})
    ca_path = emu.ca_path
    emu.stop()
    assert not os.path.exists(ca_path)
