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
import os
from typing import Any, Union

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
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _std_dumpb(obj: Any) -> bytes:
    return _std_dumps(obj).encode("utf-8")


def _std_loads(data: Union[str, bytes, bytearray]) -> Any:
    if not isinstance(data, str):
        # Strict UTF-8, in C: a frame's bytes are not checked anywhere else (the connection
        # skips websocket-client's slow check), and json.loads(bytes) would also accept UTF-16
        # and encoded surrogates. UnicodeDecodeError is a ValueError, like a JSON error.
        data = data.decode("utf-8")
    return json.loads(data)


def _orjson_dumps(obj: Any) -> str:
    result: bytes = orjson.dumps(obj)
    return result.decode("utf-8")


def _orjson_dumpb(obj: Any) -> bytes:
    result: bytes = orjson.dumps(obj)
    return result


def _orjson_loads(data: Union[str, bytes, bytearray]) -> Any:
    # orjson rejects invalid UTF-8 (and lone surrogates) itself.
    return orjson.loads(data)


if _HAVE_ORJSON:
    BACKEND = "orjson"
    dumps = _orjson_dumps
    dumpb = _orjson_dumpb
    loads = _orjson_loads
else:
    BACKEND = "json"
    dumps = _std_dumps
    dumpb = _std_dumpb
    loads = _std_loads
