"""Tensor element types as files name them, and how they map to torch and numpy.

safetensors codes are the canonical names (``F16``, ``BF16``, ``F8_E4M3`` ...); pickled
torch storages name their type by class (``HalfStorage``) and are mapped here too.

>>> DTYPES["F16"].itemsize
2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DType:
    """One element type: its safetensors code, byte size, torch dtype name and kind.

    torch is imported only when :attr:`torch_dtype` is asked for, so header-only work (and the
    identity pass over a safetensors file) never loads it.
    """

    code: str
    itemsize: int
    torch_name: str
    is_float: bool

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        dtype: torch.dtype = getattr(torch, self.torch_name)
        return dtype


def _table() -> dict[str, DType]:
    rows = [
        ("F64", 8, "float64", True),
        ("F32", 4, "float32", True),
        ("F16", 2, "float16", True),
        ("BF16", 2, "bfloat16", True),
        ("F8_E4M3", 1, "float8_e4m3fn", True),
        ("F8_E5M2", 1, "float8_e5m2", True),
        ("I64", 8, "int64", False),
        ("I32", 4, "int32", False),
        ("I16", 2, "int16", False),
        ("I8", 1, "int8", False),
        ("U8", 1, "uint8", False),
        ("BOOL", 1, "bool", False),
    ]
    return {code: DType(code, size, name, fl) for code, size, name, fl in rows}


DTYPES: dict[str, DType] = _table()
"""safetensors dtype code -> :class:`DType`."""


def by_torch(dtype: torch.dtype) -> DType:
    """The :class:`DType` of a torch dtype (KeyError for one no file format stores)."""
    name = str(dtype).removeprefix("torch.")
    for d in DTYPES.values():
        if d.torch_name == name:
            return d
    raise KeyError(name)

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
