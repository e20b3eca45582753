"""The switch that makes the emulator a server without WebSocket mode: every upgrade refused
with an HTTP status and the real API's JSON error body, HTTP untouched."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import pytest
import requests
import websocket

from oaiws.testing import Emulator, EmulatorOptions, EmulatorProcess, Fault
from oaiws.testing._options import add_arguments, options_from_namespace

from .conftest import KEY, Client, final

AUTH = {"Authorization": f"Bearer {KEY}"}


def _refused(url: str, **kwargs) -> websocket.WebSocketBadStatusException:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        Client(url, **kwargs)
    return refused.value


def _post(emu, **kwargs) -> requests.Response:
    return requests.post(
        emu.base_url + "/responses",
        json={"model": "m", "input": "x"},
        headers=AUTH,
        timeout=5,
        **kwargs,
    )


def test_construction_refuses_every_upgrade_with_the_real_404_and_http_keeps_working(
    oaiws_emulator_factory,
):
    emu = oaiws_emulator_factory(websocket_status=404)
    assert emu.websocket_status == 404 and emu.options.websocket_status == 404
    refused = _refused(emu.websocket_url)
    assert refused.status_code == 404
    assert json.loads(refused.resp_body) == {
        "error": {
            "message": "Invalid URL (GET /v1/responses)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert refused.resp_headers["content-type"].startswith("application/json")
    assert refused.resp_headers["x-request-id"].startswith("req_")
    assert _post(emu).json()["status"] == "completed"
    stats = emu.stats()
    assert stats["websocket_refused"] == 1 and stats["refused_upgrades"] == 1
    assert stats["handshakes"] == 0 and stats["connections_total"] == 0


def test_a_bad_key_is_still_a_401_and_faults_and_delays_are_left_for_upgrades(
    oaiws_emulator_factory,
):
    emu = oaiws_emulator_factory(websocket_status=404, handshake_delay=1.0)
    assert _refused(emu.websocket_url, key="sk-wrong").status_code == 401
    emu.inject(Fault(refuse_status=429), on="connection")
    started = time.monotonic()
    assert _refused(emu.websocket_url).status_code == 404
    assert time.monotonic() - started < 0.9  # no handshake delay for a refused upgrade
    assert emu.stats()["websocket_refused"] == 1 and emu.stats()["faults_applied"] == 0
    emu.set_websocket_status(None)
    assert _refused(emu.websocket_url).status_code == 429  # the fault waited for an upgrade


def test_other_statuses_keep_the_shape(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(websocket_status=503)
    refused = _refused(emu.websocket_url)
    error = json.loads(refused.resp_body)["error"]
    assert refused.status_code == 503 and error["type"] == "server_error"
    assert error["code"] is None and error["param"] is None and "WebSocket" in error["message"]
    emu.set_websocket_status(426)
    refused = _refused(emu.websocket_url)
    assert refused.status_code == 426
    assert json.loads(refused.resp_body)["error"]["type"] == "invalid_request_error"


def test_the_switch_turns_both_ways_at_runtime_and_open_sockets_stay(emu):
    assert emu.websocket_status is None
    open_client = Client(emu.websocket_url)
    try:
        emu.set_websocket_status(404)
        assert _refused(emu.websocket_url).status_code == 404
        # A connection upgraded before the switch keeps being served.
        assert final(open_client.run(input="x"))["status"] == "completed"
        emu.set_websocket_status(None)
        again = Client(emu.websocket_url)
        assert final(again.run(input="x"))["status"] == "completed"
        again.close()
    finally:
        open_client.close()
    stats = emu.stats()
    assert stats["websocket_refused"] == 1 and stats["handshakes"] == 2
    assert emu.options.websocket_status is None  # options stay what the emulator was built with


def test_the_switch_survives_a_restart():
    emulator = Emulator()
    try:
        emulator.start()
        emulator.set_websocket_status(404)
        emulator.stop()
        emulator.start()
        assert _refused(emulator.websocket_url).status_code == 404
    finally:
        emulator.stop()


@pytest.mark.parametrize("status", [101, 200, 302, 399, 600, True, "404", 404.0])
def test_bad_statuses_are_refused(emu, status):
    with pytest.raises(ValueError, match="websocket_status"):
        Emulator(websocket_status=status)
    with pytest.raises(ValueError, match="websocket_status"):
        emu.set_websocket_status(status)
    assert emu.websocket_status is None


def test_tls_refuses_wss_and_serves_https(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(tls=True, websocket_status=404)
    refused = _refused(emu.websocket_url, sslopt={"ca_certs": emu.ca_path})
    assert refused.status_code == 404
    assert _post(emu, verify=emu.ca_path).json()["status"] == "completed"


def test_the_process_switches_through_the_admin_api():
    process = EmulatorProcess(websocket_status=404).start()
    try:
        assert process.websocket_status == 404
        assert _refused(process.websocket_url).status_code == 404
        admin = process.base_url[: -len("/v1")] + "/_emulator/websocket"
        assert requests.get(admin, headers=AUTH, timeout=5).json() == {"status": 404}
        process.set_websocket_status(None)
        assert requests.get(admin, headers=AUTH, timeout=5).json() == {"status": None}
        client = Client(process.websocket_url)
        assert final(client.run(input="x"))["status"] == "completed"
        client.close()
        process.set_websocket_status(503)
        assert _refused(process.websocket_url).status_code == 503
        assert process.stats()["websocket_refused"] == 2
        bad = requests.post(admin, json={"status": 200}, headers=AUTH, timeout=5)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"
        assert requests.post(admin, json={}, headers=AUTH, timeout=5).status_code == 400
        assert requests.get(admin, timeout=5).status_code == 401
        with pytest.raises(ValueError):
            process.set_websocket_status(99)
        process.stop()
        process.start()  # the next child starts with the value set last
        assert _refused(process.websocket_url).status_code == 503
    finally:
        process.stop()


def test_the_cli_flag():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = options_from_namespace(parser.parse_args(["--websocket-status", "404"]), KEY)
    assert options.websocket_status == 404
    assert options_from_namespace(parser.parse_args([]), KEY).websocket_status is None
    assert EmulatorOptions(websocket_status=404).to_cli_args() == ["--websocket-status", "404"]
    refused = subprocess.run(
        [sys.executable, "-m", "oaiws.testing", "--websocket-status", "200"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2 and "websocket_status" in refused.stderr
