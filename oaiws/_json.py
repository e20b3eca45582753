"""JSON encoding in one place: orjson when installed (the ``fast`` extra), else the stdlib.

Every frame of the protocol is a JSON text frame, so this sits on the hot path of every
event. ``dumps`` always returns ``str``; ``dumpb`` returns the same text as UTF-8 bytes, what
goes on the wire (sending a ``str`` would only encode it again).

``OAIWS_JSON=json`` in the environment (read once, at import) forces the standard library
even where orjson is installed: to compare the two backends in one environment (the
benchmarks do), or to rule orjson out when chasing a bug.
"""

from __future__ import annotations

import json
import json.scanner
import os
from typing import Any, Callable, Union

__all__ = ["BACKEND", "dumpb", "dumps", "loads"]

_HAVE_ORJSON = False
if os.environ.get("OAIWS_JSON", "").strip().lower() not in ("json", "stdlib"):
    try:
        import orjson

        _HAVE_ORJSON = True
    except ImportError:  # the optional extra is absent: the standard library is always there
        pass


def _std_dumps(obj: Any) -> str:
    # Compact separators and raw UTF-8: smaller frames, and identical text to orjson's.
    # allow_nan=False: NaN and Infinity are not JSON, and the server would refuse the frame.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _std_dumpb(obj: Any) -> bytes:
    return _std_dumps(obj).encode("utf-8")


# The scanner behind json.loads (in C where CPython has it), without the Python around it
# (type checks, two regex matches for surrounding whitespace; docs/performance.md has the
# cost of each). Built from a default decoder, so it parses exactly what json.loads parses
# (typeshed declares the wrong type for that decoder argument).
_scan_once = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _std_loads(data: Union[str, bytes, bytearray]) -> Any:
    if not isinstance(data, str):
        # Strict UTF-8, in C: a frame's bytes are not checked anywhere else (the connection
        # skips websocket-client's slow check), and json.loads(bytes) would also accept UTF-16
        # and encoded surrogates. UnicodeDecodeError is a ValueError, like a JSON error.
        data = data.decode("utf-8")
    try:
        value, end = _scan_once(data, 0)
    except StopIteration:
        end = -1
    if end != len(data):
        # Not one bare JSON value (surrounding whitespace, extra data, or not JSON at all):
        # json.loads gives the answer, or the error, it always gave.
        return json.loads(data)
    return value


def _orjson_dumps(obj: Any) -> str:
    result: bytes = orjson.dumps(obj)
    return result.decode("utf-8")


dumps: Callable[[Any], str]
dumpb: Callable[[Any], bytes]
loads: Callable[[Union[str, bytes, bytearray]], Any]
if _HAVE_ORJSON:
    BACKEND = "orjson"
    dumps = _orjson_dumps
    # orjson's own functions, called with no Python frame in between: dumps gives UTF-8
    # bytes, and loads rejects invalid UTF-8 (and lone surrogates) itself.
    dumpb = orjson.dumps
    loads = orjson.loads
else:
    BACKEND = "json"
    dumps = _std_dumps
    dumpb = _std_dumpb
    loads = _std_loads
