"""JSON that strict parsers accept: every non-finite float (NaN, +-Infinity) is written as ``null``.

Python's :func:`json.dumps` writes bare ``NaN`` and ``Infinity`` by default, which is not JSON
(RFC 8259) and which ``jq``, JavaScript's ``JSON.parse`` and most strict parsers reject. A
tensor full of NaN gives NaN norms and scales; the report says so in ``problems`` and the number
itself becomes ``null``.

>>> dumps({"a": float("nan"), "b": [1.5, float("-inf")], "c": (2,)})
'{"a": null, "b": [1.5, null], "c": [2]}'
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float inside dicts, lists and tuples replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def dumps(doc: Any, **kwargs: Any) -> str:
    """:func:`json.dumps` of ``finite(doc)`` with ``allow_nan=False`` (so a miss raises, never writes NaN)."""
    default = kwargs.pop("default", None)
    if default is not None:  # objects turned into JSON by ``default`` may hold floats too
        doc = json.loads(json.dumps(doc, default=default, allow_nan=True))
    return json.dumps(finite(doc), allow_nan=False, **kwargs)
