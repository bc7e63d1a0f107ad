"""Whether a declared tensor shape is one torch can build at all.

torch computes a tensor's storage size as the product of its dimensions times the element
size in a signed 64-bit integer and refuses the shape when that overflows, *even when one
dimension is 0* (``torch.empty([2**62, 4, 0])`` raises). A reader that trusts such a shape
fails later with an unexpected ``RuntimeError``; it checks it here first and names the tensor.

>>> shape_overflows((2**62, 4, 0), 4)
True
>>> shape_overflows((320, 4, 3, 3), 2)
False
"""

from __future__ import annotations

from collections.abc import Sequence

INT64_MAX = 2**63 - 1


def shape_overflows(shape: Sequence[int], itemsize: int) -> bool:
    """True when a dimension, or the product of the nonzero dimensions times ``itemsize``, passes int64."""
    n = max(itemsize, 1)
    for d in shape:
        if d > INT64_MAX:
            return True
        n *= max(d, 1)
        if n > INT64_MAX:
            return True
    return False
