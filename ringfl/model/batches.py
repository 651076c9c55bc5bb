"""Mini-batches as NDArrays for :class:`~ringfl.model.gluon.GluonModel` (MXNet thread only).

:func:`minibatches` walks shuffled epochs; :func:`batch_range` yields a slice of that same
sequence, so a peer that trains an epoch in slices continues one shuffle.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from mxnet import nd


class _ShuffleBuffer:
    """One reusable float32 array for the shuffled copy of a training set.

    A fresh ``x[order]`` per epoch is a large allocation that glibc serves with mmap, so every
    epoch paid thousands of page faults zeroing it (measured: the first rounds of ten peer
    processes on two cores ran 30 % slower until glibc raised its threshold)."""

    def __init__(self) -> None:
        self._array = np.empty(0, np.float32)

    def shuffled(self, x: np.ndarray, order: np.ndarray) -> np.ndarray:
        size = len(order) * math.prod(x.shape[1:])
        if self._array.size < size:
            self._array = np.empty(size, np.float32)
        out = self._array[:size].reshape((len(order), *x.shape[1:]))
        np.take(np.asarray(x, dtype=np.float32), order, axis=0, out=out)
        return out


_SHUFFLE = _ShuffleBuffer()  # the model runs on one MXNet thread, so one buffer serves all peers


def batch_range(x: np.ndarray, y: np.ndarray, batch_size: int, start: int, steps: int,
                 rng: np.random.Generator) -> Any:
    """Batches ``start .. start + steps - 1`` of the shuffled epochs :func:`minibatches` yields for
    the same ``rng``; only those rows are gathered (an exchange every batch must not copy the shard)."""
    if batch_size < 1 or start < 0 or steps < 0:
        raise ValueError("batch_size must be >= 1, start and steps >= 0")
    n = len(y)
    if n == 0:
        return
    per_epoch = math.ceil(n / batch_size)
    epoch, order = -1, np.zeros(0, np.int64)
    for batch in range(start, start + steps):
        wanted, i = divmod(batch, per_epoch)
        while epoch < wanted:  # the same permutations, in the same order, as minibatches draws
            order, epoch = rng.permutation(n), epoch + 1
        rows = order[i * batch_size : (i + 1) * batch_size]
        yield nd.array(np.asarray(x[rows], dtype=np.float32)), nd.array(y[rows], dtype="float32")


def minibatches(x: np.ndarray, y: np.ndarray, batch_size: int, epochs: int, steps: int | None,
             rng: np.random.Generator | None) -> Any:
    """Mini-batches as NDArrays; shuffled per epoch when ``rng`` is given; ``steps`` caps the count."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    n, done = len(y), 0
    if n == 0:
        return
    rounds = epochs if steps is None else math.ceil(steps * batch_size / n) + 1
    for _ in range(rounds):
        if rng is not None:
            order = rng.permutation(n)
            xs = nd.array(_SHUFFLE.shuffled(x, order), dtype="float32")
            ys = nd.array(y[order], dtype="float32")
        else:
            xs, ys = nd.array(x, dtype="float32"), nd.array(y, dtype="float32")
        for start in range(0, n, batch_size):
            if steps is not None and done >= steps:
                return
            yield xs[start : start + batch_size], ys[start : start + batch_size]
            done += 1
