"""Start/stop, ports and threads, loopback only, the CLI, the child process, the plugin."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading

import pytest
from waiting import wait_for

from oaiws.testing import Emulator, EmulatorProcess

from .conftest import Client, final


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def test_stop_releases_the_port_and_every_thread():
    before = _threads()
    emulator = Emulator()
    for _ in range(5):
        emulator.start()
        port = emulator.port
        client = Client(emulator.websocket_url)
        assert final(client.run(input="x"))["status"] == "completed"
        emulator.stop()  # with the client still connected and not reading
        assert client.close_code() in (1001, None)
        assert _threads() == before
        with socket.socket() as probe:  # the port can be bound again
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
    with Emulator(port=port) as again:  # and a new emulator can take it
        assert again.port == port
    emulator.stop()  # stopping twice is harmless
    assert _threads() == before


def test_stats_and_the_store_survive_a_restart_but_the_cache_does_not():
    with Emulator() as emulator:
        client = Client(emulator.websocket_url)
        kept = final(client.run(input="x"))
        lost = final(client.run(input="y", store=False))
    with emulator:
        assert emulator.stats()["responses_completed"] == 2
        client = Client(emulator.websocket_url)
        assert (
            final(client.run(input="z", previous_response_id=kept["id"]))["status"] == "completed"
        )
        error = client.run(input="z", previous_response_id=lost["id"])[-1]
        assert error["error"]["code"] == "previous_response_not_found"
        emulator.reset_stats()
        stats = emulator.stats()
        assert stats["requests"] == 0 and stats["connections_open"] == 1


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::"])
def test_only_loopback_addresses(host):
    with pytest.raises(ValueError, match="loopback"):
        Emulator(host=host)


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        emulator = Emulator(host="::1").start()
    except ValueError:
        pytest.skip("IPv6 loopback unavailable")
    with emulator:
        assert emulator.websocket_url.startswith("ws://[::1]:")
        assert final(Client(emulator.websocket_url).run(input="x"))["status"] == "completed"


def test_the_key_never_shows():
    emulator = Emulator(api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(emulator) + repr(emulator.options)


def test_bad_options_fail_fast():
    with pytest.raises(ValueError):
        Emulator(deltas=-1)
    with pytest.raises(ValueError):
        Emulator(max_connection_age=0)
    with pytest.raises(ValueError):
        Emulator(certfile="c.pem")
    with pytest.raises(ValueError, match="non-negative"):
        Emulator(tls=True, session_tickets=-1)
    with pytest.raises(ValueError, match="needs tls=True"):
        Emulator(session_tickets=0)


def _has_session_ticket(emu) -> bool:
    """Whether a TLS 1.3 client got a session ticket from the emulator by its first answer."""
    context = ssl.create_default_context(cafile=emu.ca_path)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    raw = socket.create_connection((emu.host, emu.port), timeout=10)
    with context.wrap_socket(raw, server_hostname=emu.host) as tls:
        tls.sendall(
            f"GET /v1/responses/resp_none HTTP/1.1\r\nHost: {emu.host}\r\n"
            f"Authorization: Bearer {emu.api_key}\r\nConnection: close\r\n\r\n".encode()
        )
        while tls.recv(65536):  # tickets come before the answer; read it all
            pass
        return bool(tls.session is not None and tls.session.has_ticket)


@pytest.mark.parametrize(("tickets", "expected"), [(None, True), (0, False)])
def test_session_tickets_are_sent_unless_turned_off(oaiws_emulator_factory, tickets, expected):
    options = {} if tickets is None else {"session_tickets": tickets}
    emu = oaiws_emulator_factory(tls=True, **options)
    assert _has_session_ticket(emu) is expected


@pytest.mark.parametrize("command", [["-m", "oaiws.testing"], ["-m", "oaiws.cli", "emulator"]])
def test_cli_prints_urls_and_exits_zero_on_sigterm(command):
    process = subprocess.Popen(
        [sys.executable, *command, "--port", "0", "--deltas", "2", "--tls", "--api-key", "sk-cli"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = process.stdout.readline().strip()
        websocket_url = process.stdout.readline().strip()
        ca_path = process.stdout.readline().strip()
        assert base_url.startswith("https://127.0.0.1:") and base_url.endswith("/v1")
        assert websocket_url == base_url.replace("https", "wss") + "/responses"
        client = Client(websocket_url, key="sk-cli", sslopt={"ca_certs": ca_path})
        events = client.run(input="x")
        assert sum(e["type"] == "response.output_text.delta" for e in events) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert not os.path.exists(ca_path)
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def test_cli_exits_on_sigint_and_rejects_bad_hosts():
    process = subprocess.Popen(
        [sys.executable, "-m", "oaiws.testing"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().startswith("http://127.0.0.1:")
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
    refused = subprocess.run(
        [sys.executable, "-m", "oaiws.testing", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2 and "loopback" in refused.stderr


def test_emulator_process_stops_cleanly_and_hides_the_key():
    process = EmulatorProcess(api_key="sk-hidden", tls=True).start()
    pid = process.pid
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            assert b"sk-hidden" not in handle.read()
        client = Client(
            process.websocket_url, key="sk-hidden", sslopt={"ca_certs": process.ca_path}
        )
        assert final(client.run(input="x"))["status"] == "completed"
        assert process.stats()["responses_completed"] == 1
    finally:
        process.stop()
    assert not process.running
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), what="the child to exit")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_the_child_exits_when_its_parent_dies(tmp_path):
    """A parent killed outright (no cleanup at all) must not leave the emulator running."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys\n"
        "from oaiws.testing import EmulatorProcess\n"
        "p = EmulatorProcess().start()\n"
        "print(p.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    parent = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    child = int(parent.stdout.split()[0])
    wait_for(lambda: _gone(child), timeout=10, what="the orphaned child to exit")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return _zombie(pid)


def test_the_plugin_and_package_import_without_aiohttp():
    code = (
        "import sys\n"
        "sys.modules['aiohttp'] = None\n"
        "sys.modules['cryptography'] = None\n"
        "import oaiws.testing.pytest_plugin, oaiws.cli\n"
        "from oaiws.testing import Emulator\n"
        "try:\n"
        "    Emulator().start()\n"
        "except ValueError as exc:\n"
        "    print('refused:', exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'oaiws[emulator]'" in result.stdout


def test_plugin_fixture(oaiws_emulator):
    assert oaiws_emulator.running
    assert final(Client(oaiws_emulator.websocket_url).run(input="x"))["status"] == "completed"
