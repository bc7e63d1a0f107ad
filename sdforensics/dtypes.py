"""Tensor element types as files name them, and how they map to torch.

safetensors codes are the canonical names (``F16``, ``BF16``, ``F8_E4M3`` ...); pickled
torch storages name their type by class (``HalfStorage``) and are mapped here too.

>>> DTYPES["F16"].itemsize
2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DType:
    """One element type: its safetensors code, byte size, torch dtype and kind."""

    code: str
    itemsize: int
    torch_dtype: torch.dtype
    is_float: bool


def _table() -> dict[str, DType]:
    rows = [
        ("F64", 8, torch.float64, True),
        ("F32", 4, torch.float32, True),
        ("F16", 2, torch.float16, True),
        ("BF16", 2, torch.bfloat16, True),
        ("F8_E4M3", 1, torch.float8_e4m3fn, True),
        ("F8_E5M2", 1, torch.float8_e5m2, True),
        ("I64", 8, torch.int64, False),
        ("I32", 4, torch.int32, False),
        ("I16", 2, torch.int16, False),
        ("I8", 1, torch.int8, False),
        ("U8", 1, torch.uint8, False),
        ("BOOL", 1, torch.bool, False),
    ]
    return {code: DType(code, size, dt, fl) for code, size, dt, fl in rows}


DTYPES: dict[str, DType] = _table()
"""safetensors dtype code -> :class:`DType`."""

BY_TORCH: dict[torch.dtype, DType] = {d.torch_dtype: d for d in DTYPES.values()}
"""torch dtype -> :class:`DType`."""

STORAGE_CLASSES: dict[str, DType] = {
    "DoubleStorage": DTYPES["F64"],
    "FloatStorage": DTYPES["F32"],
    "HalfStorage": DTYPES["F16"],
    "BFloat16Storage": DTYPES["BF16"],
    "LongStorage": DTYPES["I64"],
    "IntStorage": DTYPES["I32"],
    "ShortStorage": DTYPES["I16"],
    "CharStorage": DTYPES["I8"],
    "ByteStorage": DTYPES["U8"],
    "BoolStorage": DTYPES["BOOL"],
    "Float8_e4m3fnStorage": DTYPES["F8_E4M3"],
    "Float8_e5m2Storage": DTYPES["F8_E5M2"],
}
"""Pickled ``torch.*Storage`` class name -> :class:`DType` (legacy and zip .ckpt files)."""
