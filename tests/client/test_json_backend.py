"""The JSON backend: orjson when installed, the standard library on request, and both refuse
frames that are not UTF-8 (the connection leaves that check to the decoder)."""

from __future__ import annotations

import json
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


def _decoder(backend: str):
    if backend == "orjson":
        return pytest.importorskip("orjson").loads
    return _json._std_loads


@pytest.mark.parametrize("backend", ["json", "orjson"])
def test_frames_that_are_not_utf8_are_refused_by_the_decoder(backend):
    # The connection leaves UTF-8 validation to the JSON decoder (websocket-client's own
    # check is pure Python and the slowest part of receiving), so the decoder must refuse.
    loads = _decoder(backend)
    for bad in (b'{"a":"\xff"}', b'{"a":"\xed\xa0\x80"}', '{"a":1}'.encode("utf-16")):
        with pytest.raises(ValueError):
            loads(bad)
    assert loads(bytearray('{"a":"é"}'.encode())) == {"a": "é"}


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"response.output_text.delta","delta":"h\\u00e9","n":[1,2.5,null,true]}',
        '  {"a": 1}  ',  # surrounding whitespace: still one value
        "\n[1]\r\n",
        '"just a string"',
        "12345678901234567890123",
        "NaN",
        '{"a": {"b": [{}]}}',
    ],
)
def test_the_standard_library_backend_decodes_exactly_like_json_loads(text):
    # _std_loads calls the C scanner directly and falls back to json.loads for anything
    # but one bare value: the results must be the same either way.
    # (repr, so that NaN compares equal to itself)
    assert repr(_json._std_loads(text.encode())) == repr(json.loads(text))
    assert repr(_json._std_loads(text)) == repr(json.loads(text))


@pytest.mark.parametrize(
    "text", ['{"a": 1} x', '{"a": 1}{"b": 2}', "", "   ", "{", '{"a" 1}', "[1,]", "nul"]
)
def test_the_standard_library_backend_refuses_what_json_loads_refuses(text):
    with pytest.raises(json.JSONDecodeError) as ours:
        _json._std_loads(text.encode())
    with pytest.raises(json.JSONDecodeError) as theirs:
        json.loads(text)
    assert str(ours.value) == str(theirs.value)
