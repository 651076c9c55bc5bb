"""Fixed-point encoding of clipped float updates into the ring Z_2^32, and back from a sum.

Each coordinate is clipped to [-R, R] and encoded as ``round(x · scale) mod 2^32`` with
``scale = floor((2^31 - 1 - n/2) / (n · R))`` for at most ``n`` summands, so the sum of ``n``
encodings never wraps and decodes exactly as a signed 32-bit integer. Error bound (documented,
tested): for ``m <= n`` summands, every coordinate of the decoded sum is within ``m / (2 · scale)``
of the sum of the clipped inputs (each rounding moves a value by at most half a step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ringfl.errors import ConfigError

_HALF_RING = 2**31


@dataclass(frozen=True)
class Quantizer:
    """The ring encoding for up to ``max_summands`` inputs clipped to ``[-bound, bound]``."""

    bound: float
    max_summands: int

    def __post_init__(self) -> None:
        if not (self.bound > 0 and math.isfinite(self.bound)):
            raise ConfigError(f"secagg bound must be a positive number, got {self.bound}")
        if self.max_summands < 1 or self.scale < 1:
            raise ConfigError(f"secagg cannot sum {self.max_summands} inputs of bound {self.bound} "
                              "in 32 bits; lower the bound")

    @property
    def scale(self) -> float:
        n = self.max_summands
        return float(math.floor((_HALF_RING - 1 - n / 2) / (n * self.bound)))

    def error_bound(self, summands: int) -> float:
        """Largest error of any coordinate of a decoded sum of ``summands`` clipped inputs."""
        return summands / (2.0 * self.scale)

    def clip(self, vector: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(vector, np.float64), -self.bound, self.bound)

    def encode(self, vector: np.ndarray) -> np.ndarray:
        """Clipped, scaled, rounded, reduced mod 2^32 (two's complement for negatives)."""
        return np.rint(self.clip(vector) * self.scale).astype(np.int64).astype(np.uint32)

    def decode_sum(self, words: np.ndarray, summands: int) -> np.ndarray:
        """The float64 sum that ``words`` (a sum of at most ``max_summands`` encodings) encodes."""
        if summands > self.max_summands:
            raise ValueError(f"{summands} summands, the encoding allows {self.max_summands}")
        return np.asarray(words, np.uint32).view(np.int32).astype(np.float64) / self.scale
