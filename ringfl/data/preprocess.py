"""Adapt image arrays to the input shape a model spec declares.

Datasets keep their natural sample shape (``(28, 28)``, ``(8, 8)``, ...); a model declares the
shape it wants without the batch axis. :func:`prepare` bridges the two so any model can be paired
with any source whose data fits: flattening for an MLP, adding a channel axis for a CNN,
zero-padding 28x28 to 32x32 for LeNet-style nets, rows-as-timesteps for an LSTM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ringfl.errors import DataError


def prepare(x: np.ndarray, input_shape: Sequence[int]) -> np.ndarray:
    """Return ``x`` (N x sample shape) as float32 C-contiguous N x ``input_shape``.

    Reshapes are views when ``x`` is contiguous; only padding copies, so calling this per batch
    on the shared arrays costs no more than the batch itself.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2:
        raise DataError(f"cannot prepare data of shape {x.shape}: expected (N, ...) samples")
    source, target = tuple(x.shape[1:]), tuple(int(d) for d in input_shape)
    if not target or min(target) < 1:
        raise DataError(f"invalid model input shape {target}")
    if source == target:
        out = x
    elif math.prod(source) == math.prod(target) and 1 in (len(source), len(target)):
        out = x.reshape(len(x), *target)  # flatten for an MLP, or unflatten stored vectors
    else:
        out = _fit_image(x, source, target)
    return np.ascontiguousarray(out, dtype=np.float32)


def _fit_image(x: np.ndarray, source: tuple[int, ...], target: tuple[int, ...]) -> np.ndarray:
    """(H, W) or (C, H, W) samples to (H', W') or (C', H', W'), zero-padding H, W centrally."""
    if len(source) not in (2, 3) or len(target) not in (2, 3):
        raise _mismatch(source, target, "no reshape or padding maps one to the other")
    images = x[:, None] if len(source) == 2 else x  # N, C, H, W
    want_channels = target[0] if len(target) == 3 else 1
    if images.shape[1] != want_channels:
        raise _mismatch(source, target, f"{images.shape[1]} channel(s) vs {want_channels}")
    images = _pad_centered(images, target[-2:], source, target)
    return images.reshape(len(x), *target)


def _pad_centered(
    images: np.ndarray, size: tuple[int, ...], source: tuple[int, ...], target: tuple[int, ...]
) -> np.ndarray:
    (h, w), (th, tw) = images.shape[2:], size
    if (h, w) == (th, tw):
        return images
    if th < h or tw < w:
        raise _mismatch(source, target, "the model input is smaller than the images")
    top, left = (th - h) // 2, (tw - w) // 2
    out = np.zeros((*images.shape[:2], th, tw), dtype=np.float32)
    out[:, :, top : top + h, left : left + w] = images
    return out


def _mismatch(source: tuple[int, ...], target: tuple[int, ...], why: str) -> DataError:
    return DataError(
        f"cannot prepare data of sample shape {source} for model input shape {target}: {why}"
    )
