"""Reference lines every comparison needs: centralized training and standalone (one peer alone).

Collaboration is worth something only if it beats a peer training alone, and it can at best match
training on everybody's data in one place; experiments and benchmarks report both next to the
distributed algorithms. Both use the same model runtime and preprocessing as the peers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ringfl.config import TrainingConfig
from ringfl.data import DataSplits, prepare
from ringfl.model import ModelSpec
from ringfl.model.runtime import shared_model


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    test_loss: float
    accuracy: float
    seconds: float


def train_reference(
    spec: ModelSpec,
    splits: DataSplits,
    training: TrainingConfig,
    epochs: int,
    *,
    indices: np.ndarray | None = None,
    seed: int = 0,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> list[EpochResult]:
    """Train from the spec's seeded init on ``splits.train`` (or the rows ``indices``), test each epoch."""
    import time

    model = shared_model(spec)
    train_x = splits.train.x if indices is None else splits.train.x[indices]
    train_y = splits.train.y if indices is None else splits.train.y[indices]
    x, y = prepare(train_x, spec.input_shape), train_y
    test_x = prepare(splits.test.x, spec.input_shape)
    params = model.init_params(seed)
    results = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        trained = model.train_sync(
            params, x, y, lr=training.lr, batch_size=training.batch_size,
            momentum=training.momentum, weight_decay=training.weight_decay, seed=seed * 1000 + epoch,
        )
        params = trained.params
        test_loss, accuracy = model.evaluate_sync(params, test_x, splits.test.y)
        result = EpochResult(epoch, trained.loss, test_loss, accuracy, time.perf_counter() - start)
        results.append(result)
        if on_epoch:
            on_epoch(result)
    return results
