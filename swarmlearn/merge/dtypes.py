"""Element types a model state may hold, and bfloat16 carried as its bit pattern.

Every tensor has a *dtype name*: one of :data:`FLOAT_DTYPES`, :data:`INT_DTYPES` or ``"bool"``.
The name, not the numpy dtype, is what the manifest records, because numpy has no bfloat16: a
bfloat16 tensor is a ``uint16`` array of bit patterns tagged ``"bfloat16"``.

Floating tensors are merged in a *compute dtype*: float64 for float64, float32 for float32,
float16 and bfloat16. bfloat16 widens to float32 exactly (the bits shifted left by 16) and
narrows back with round-to-nearest-even (:func:`bfloat16_from_float32`), which is deterministic
on every machine because it is integer arithmetic on the bit pattern.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
BOOL_DTYPE = "bool"
DTYPE_NAMES = (*FLOAT_DTYPES, *INT_DTYPES, BOOL_DTYPE)

Kind = Literal["float", "int", "bool"]

_STORAGE: dict[str, np.dtype[Any]] = {
    "float64": np.dtype("<f8"),
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "int8": np.dtype("i1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "uint32": np.dtype("<u4"),
    "uint64": np.dtype("<u8"),
    "bool": np.dtype("?"),
}


def check_dtype_name(name: str) -> str:
    """Return ``name`` if it is a supported dtype name, else raise ``ValueError``."""
    if name not in _STORAGE:
        raise ValueError(f"unsupported dtype {name!r}; valid: {', '.join(DTYPE_NAMES)}")
    return name


def storage_dtype(name: str) -> np.dtype[Any]:
    """The little-endian numpy dtype a tensor of ``name`` is stored as in the flat layout."""
    return _STORAGE[check_dtype_name(name)]


def itemsize(name: str) -> int:
    return int(storage_dtype(name).itemsize)


def kind(name: str) -> Kind:
    if name in FLOAT_DTYPES:
        return "float"
    if name in INT_DTYPES:
        return "int"
    check_dtype_name(name)
    return "bool"


def compute_dtype(name: str) -> np.dtype[Any]:
    """The dtype floating tensors of ``name`` are accumulated in (float64 or float32)."""
    if kind(name) != "float":
        raise ValueError(f"{name} is not a floating dtype")
    return np.dtype(np.float64) if name == "float64" else np.dtype(np.float32)


def dtype_name_of(array: NDArray[Any]) -> str:
    """The dtype name of a numpy array (``uint16`` stays ``uint16``: bfloat16 is a tag)."""
    name = array.dtype.name
    if name not in _STORAGE or name == "bfloat16":
        raise ValueError(f"unsupported array dtype {array.dtype}; valid: {', '.join(DTYPE_NAMES)}")
    return name


def bfloat16_to_float32(bits: NDArray[Any], out: NDArray[np.float32] | None = None) -> Any:
    """Widen bfloat16 bit patterns (uint16) to float32, exactly."""
    wide = np.left_shift(bits, 16, dtype=np.uint32)
    if out is None:
        return wide.view(np.float32)
    np.copyto(out.view(np.uint32), wide)
    return out


def bfloat16_from_float32(values: NDArray[Any], out: NDArray[np.uint16] | None = None) -> Any:
    """Round float32 values to bfloat16 bit patterns, round-to-nearest-even.

    NaN stays NaN (quieted, sign kept); values past the largest bfloat16 round to infinity,
    as IEEE rounding does.
    """
    word = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    lsb = np.bitwise_and(np.right_shift(word, 16), 1)
    rounded = np.right_shift(word + np.uint32(0x7FFF) + lsb, 16)
    is_nan = np.bitwise_and(word, 0x7FFFFFFF) > 0x7F800000
    quiet = np.bitwise_or(np.right_shift(word, 16), 0x0040)
    result = np.where(is_nan, quiet, rounded).astype(np.uint16)
    if out is None:
        return result
    np.copyto(out, result)
    return out


def to_compute(values: NDArray[Any], name: str) -> Any:
    """A floating tensor's values in its compute dtype (a view when no conversion is needed)."""
    if name == "bfloat16":
        return bfloat16_to_float32(values)
    return values.astype(compute_dtype(name), copy=False)


def store_float(values: NDArray[Any], name: str, out: NDArray[Any]) -> None:
    """Write compute-dtype ``values`` into ``out`` (storage dtype of ``name``), rounding RNE."""
    if name == "bfloat16":
        bfloat16_from_float32(values.astype(np.float32, copy=False), out)
    else:
        np.copyto(out, values, casting="same_kind")
