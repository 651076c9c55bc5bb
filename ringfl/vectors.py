"""Flat parameter vectors and sparse updates shared by algorithms, privacy and the wire codec.

Everything that moves between peers is a flat float32 vector in the model's documented layer
order (see ``ringfl.model``). A selective update is a :class:`SparseVector`: sorted unique uint32
indices plus float32 values, so the codec can send it without per-element Python work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def all_indices(size: int) -> np.ndarray:
    """The read-only index array 0..size-1 of a dense vector seen as sparse: one shared copy per
    model size, so full-model gossip (D-PSGD, θu = 1) does not build one per message."""
    indices = np.arange(size, dtype=np.uint32)
    indices.flags.writeable = False
    return indices


@dataclass(frozen=True)
class SparseVector:
    """A sparse view of a length-``size`` float32 vector: ``dense[indices] == values``."""

    size: int
    indices: np.ndarray  # uint32, sorted ascending, unique, all < size
    values: np.ndarray  # float32, same length as indices
    # True when the wire codec already verified all of the above and finite values on read-only
    # arrays: receivers then skip re-checking every upload (about 50 µs each in the gradient pool).
    checked: bool = field(default=False, compare=False, repr=False)

    @classmethod
    def from_indices(cls, size: int, indices: np.ndarray, values: np.ndarray) -> SparseVector:
        """Build from unsorted indices (sorted here); indices must be unique."""
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        return cls(
            size=int(size),
            indices=idx[order].astype(np.uint32),
            values=np.asarray(values, dtype=np.float32)[order],
        )

    @classmethod
    def take(cls, dense: np.ndarray, indices: np.ndarray) -> SparseVector:
        """The entries of ``dense`` at ``indices``."""
        idx = np.sort(np.asarray(indices, dtype=np.int64))
        return cls(int(dense.size), idx.astype(np.uint32), dense[idx].astype(np.float32))

    @classmethod
    def empty(cls, size: int) -> SparseVector:
        return cls(int(size), np.zeros(0, np.uint32), np.zeros(0, np.float32))

    @classmethod
    def dense(cls, values: np.ndarray) -> SparseVector:
        """Every coordinate of ``values`` (float32), sharing :func:`all_indices`."""
        values = np.asarray(values, dtype=np.float32)
        return cls(int(values.size), all_indices(int(values.size)), values)

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    @property
    def is_full(self) -> bool:
        """Every coordinate present (then indices are 0..size-1: unique, sorted, < size)."""
        return self.indices.size == self.size

    @property
    def density(self) -> float:
        return self.nnz / self.size if self.size else 0.0

    def bitmap(self) -> np.ndarray:
        """``indices`` as a packed little-endian bit mask of ``size`` bits (the codec's compact
        form). Cached when the index array is read-only, as received ones are: a selection sent
        to several neighbours, or forwarded, is packed once."""
        cached = self.__dict__.get("_bitmap")
        if cached is not None:
            return cached
        bits = np.zeros(-(-self.size // 8) * 8, dtype=np.uint8)
        bits[self.indices.astype(np.intp)] = 1  # 2x faster than scattering with uint32 indices
        packed = np.packbits(bits, bitorder="little")
        if not self.indices.flags.writeable:
            packed.flags.writeable = False
            self.__dict__["_bitmap"] = packed  # frozen dataclass: a cache, not a field
        return packed

    def to_dense(self) -> np.ndarray:
        if self.is_full:
            return np.array(self.values, dtype=np.float32, copy=True)
        out = np.zeros(self.size, dtype=np.float32)
        out[self.indices.astype(np.intp)] = self.values
        return out

    def add_to(self, dense: np.ndarray, scale: float = 1.0) -> None:
        """``dense[indices] += scale * values`` in place (indices are unique, so no np.add.at)."""
        if self.is_full:
            dense += self.values if scale == 1.0 else np.float32(scale) * self.values
            return
        idx = self.indices.astype(np.intp)  # uint32 fancy indexes are converted on every use
        if scale == 1.0:
            dense[idx] += self.values
        else:
            dense[idx] += np.float32(scale) * self.values

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SparseVector):
            return NotImplemented
        return (
            self.size == other.size
            and np.array_equal(self.indices, other.indices)
            and np.array_equal(self.values, other.values)
        )

    __hash__ = None  # type: ignore[assignment]


Vector = np.ndarray | SparseVector
"""What an update carries: a dense float32 vector or a sparse selection."""


def scaled(vector: Vector, factor: float) -> Vector:
    """``factor × vector``, keeping a sparse vector's indices."""
    if isinstance(vector, SparseVector):
        return SparseVector(vector.size, vector.indices, vector.values * np.float32(factor))
    return np.asarray(vector, np.float32) * np.float32(factor)


def as_dense(vector: Vector) -> np.ndarray:
    """A dense float32 copy-or-view of ``vector``."""
    if isinstance(vector, SparseVector):
        return vector.to_dense()
    return np.asarray(vector, dtype=np.float32)
