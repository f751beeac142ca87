"""Model state: an ordered mapping of tensor names to numpy arrays, dtypes and shapes kept exactly.

A :class:`ModelState` wraps the arrays it is given (no copy). Each entry has a dtype name (see
:mod:`swarmlearn.merge.dtypes`); bfloat16 entries are ``uint16`` arrays of bit patterns named in
``bfloat16=``. 0-d arrays (scalars) and integer buffers such as BatchNorm's
``num_batches_tracked`` are ordinary entries. Two states are equal when they have the same
names in the same order, the same dtype names and shapes, and the same element bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from swarmlearn.merge.dtypes import dtype_name_of, storage_dtype


class ModelState(Mapping[str, NDArray[Any]]):
    """Named arrays in a fixed order; the unit that is packed, hashed, exchanged and merged."""

    __slots__ = ("_arrays", "_dtypes")

    def __init__(
        self,
        arrays: Mapping[str, NDArray[Any]] | Iterable[tuple[str, NDArray[Any]]],
        *,
        bfloat16: Iterable[str] = (),
    ) -> None:
        items = list(arrays.items()) if isinstance(arrays, Mapping) else list(arrays)
        self._arrays: dict[str, NDArray[Any]] = {}
        self._dtypes: dict[str, str] = {}
        for name, array in items:
            if not isinstance(name, str) or not name:
                raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
            if name in self._arrays:
                raise ValueError(f"tensor {name!r} appears twice")
            if not isinstance(array, np.ndarray):
                raise ValueError(f"tensor {name!r} is a {type(array).__name__}, not a numpy array")
            try:
                self._dtypes[name] = dtype_name_of(array)
            except ValueError as error:
                raise ValueError(f"tensor {name!r}: {error}") from None
            self._arrays[name] = array
        for name in bfloat16:
            if name not in self._arrays:
                raise ValueError(f"bfloat16 names tensor {name!r}, which the state does not hold")
            if self._arrays[name].dtype != np.uint16:
                raise ValueError(f"bfloat16 tensor {name!r} must be uint16 bit patterns")
            self._dtypes[name] = "bfloat16"

    def __getitem__(self, name: str) -> NDArray[Any]:
        return self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def dtype(self, name: str) -> str:
        """The dtype name of tensor ``name`` (``"bfloat16"`` for tagged uint16 arrays)."""
        return self._dtypes[name]

    @property
    def bfloat16_names(self) -> tuple[str, ...]:
        return tuple(name for name, dtype in self._dtypes.items() if dtype == "bfloat16")

    def signature(self) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        """(name, dtype name, shape) of every entry, in order: what two states must share."""
        return tuple((name, self._dtypes[name], a.shape) for name, a in self._arrays.items())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelState):
            return NotImplemented
        if self.signature() != other.signature():
            return False
        return all(_same_bytes(self[name], other[name], self._dtypes[name]) for name in self)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        body = ", ".join(f"{name}: {dtype}{list(shape)}" for name, dtype, shape in self.signature())
        return f"ModelState({body})"


def _same_bytes(a: NDArray[Any], b: NDArray[Any], dtype: str) -> bool:
    stored = storage_dtype(dtype)
    left = np.ascontiguousarray(a, dtype=stored)
    right = np.ascontiguousarray(b, dtype=stored)
    return left.tobytes() == right.tobytes()
