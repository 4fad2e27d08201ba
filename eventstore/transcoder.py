"""The event store's transcoder: eventsourcing's JSON transcoder, decoding and encoding with orjson.

Decoding stored events is a large share of the cost of every read model and of loading customers
(the library's decoder calls a Python hook for every JSON object). orjson parses the bytes; the
library's own `_decode_obj` then turns `{"_type_": ..., "_data_": ...}` objects into values,
bottom-up, exactly as the library's `object_hook` would. Whatever orjson refuses (an integer
beyond 64 bits, which it would read as a float) is decoded by the library's decoder.

Encoding goes through orjson only for what it writes byte for byte as the library's encoder does:
a dict whose values are strings, integers, booleans, nulls, and lists and string-keyed dicts of
those, or (at the top) a datetime or Decimal, which are handed to the library's transcodings. An
event's state is that (its content is the canonical JSON form of the envelope). Anything else
(floats, UUIDs, enums, str subclasses, integers beyond 64 bits, lone surrogates) is encoded by the
library's encoder: orjson would write some of those differently.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from eventsourcing.persistence import JSONTranscoder

# orjson reads an integer beyond 64 bits as a float, silently: such bytes go to the library's
# decoder. A number follows ":", "[" or "," (and maybe spaces); a string
# holding ",1234..." only costs the slower decoder, never a wrong value.
_LONG_INTEGER = re.compile(rb"[:\[,]\s*-?\d{19}")


_PLAIN_LEAVES = frozenset({str, int, bool, type(None)})
_TRANSCODED_AT_TOP = frozenset({datetime, Decimal})  # orjson hands these to `default`
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME


def _plain(value: Any) -> bool:
    """Only values both encoders write alike: JSON's own types, no floats, string keys."""
    kind = type(value)
    if kind in _PLAIN_LEAVES:
        return True
    if kind is dict:
        return all(type(key) is str and _plain(item) for key, item in value.items())
    if kind is list:
        return all(_plain(item) for item in value)
    return False


class FastJSONTranscoder(JSONTranscoder):
    def encode(self, obj: Any) -> bytes:
        if type(obj) is dict and all(
            type(key) is str and (type(value) in _TRANSCODED_AT_TOP or _plain(value)) for key, value in obj.items()
        ):
            try:
                return orjson.dumps(obj, default=self._encode_obj, option=_ORJSON_OPTIONS)
            except orjson.JSONEncodeError:
                pass  # an integer beyond 64 bits, a lone surrogate, too deep: the library's encoder says
        return super().encode(obj)

    def decode(self, data: bytes) -> Any:
        if _LONG_INTEGER.search(data):
            return super().decode(data)
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return super().decode(data)
        # Usually only top-level values are typed (an event's timestamp and occurred_at): revive
        # those, and walk the whole tree only when the bytes hold typed objects deeper down.
        # `"_type_":` can only be a key (a quote inside a JSON string is escaped).
        typed = data.count(b'"_type_":')
        if typed and type(parsed) is dict:
            for key, value in parsed.items():
                if type(value) is dict and len(value) == 2 and "_type_" in value:
                    parsed[key] = self._decode_obj(value)
                    typed -= 1
        return self._revive(parsed) if typed else parsed

    def _revive(self, value: Any) -> Any:
        if type(value) is dict:
            for key, item in value.items():
                if type(item) is dict or type(item) is list:
                    value[key] = self._revive(item)
            return self._decode_obj(value) if len(value) == 2 else value
        if type(value) is list:
            return [self._revive(item) if type(item) is dict or type(item) is list else item for item in value]
        return value
