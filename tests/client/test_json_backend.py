"""The JSON backend: orjson when installed, the standard library on request, and both refuse
frames that are not UTF-8 (the connection leaves that check to the decoder)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from oaiws import _json


def test_oaiws_json_forces_the_standard_library_backend():
    code = "from oaiws import _json; print(_json.BACKEND)"
    env = {**os.environ, "OAIWS_JSON": "json"}
    forced = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert forced.stdout.strip() == "json"


@pytest.mark.parametrize("backend", ["_std_loads", "_orjson_loads"])
def test_frames_that_are_not_utf8_are_refused_by_the_decoder(backend):
    # The connection leaves UTF-8 validation to the JSON decoder (websocket-client's own
    # check is pure Python and the slowest part of receiving), so the decoder must refuse.
    if backend == "_orjson_loads":
        pytest.importorskip("orjson")
    loads = getattr(_json, backend)
    for bad in (b'{"a":"\xff"}', b'{"a":"\xed\xa0\x80"}', '{"a":1}'.encode("utf-16")):
        with pytest.raises(ValueError):
            loads(bad)
    assert loads(bytearray('{"a":"é"}'.encode())) == {"a": "é"}
