"""The in-memory dataset types every other part of ringfl trains and evaluates on.

Arrays are converted and validated once, here, so that training code can trust them: images are
float32 in [0, 1] with the sample axis first, labels are int64 in ``[0, num_classes)``. Arrays
built by :func:`make_dataset` are read-only because many in-process peers share one copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ringfl.errors import DataError


@dataclass(frozen=True, eq=False)
class Dataset:
    """Samples ``x`` (float32, N x ...) with labels ``y`` (int64, N) in ``[0, num_classes)``."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if self.x.dtype != np.float32 or self.x.ndim < 2:
            raise DataError(
                f"{self.name}: x must be float32 with shape (N, ...), got "
                f"{self.x.dtype} {self.x.shape}"
            )
        if self.y.dtype != np.int64 or self.y.ndim != 1:
            raise DataError(
                f"{self.name}: y must be int64 with shape (N,), got {self.y.dtype} {self.y.shape}"
            )
        if len(self.x) != len(self.y):
            raise DataError(f"{self.name}: x has {len(self.x)} samples but y has {len(self.y)}")
        if self.num_classes < 1:
            raise DataError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
        _check_label_range(self.y, self.num_classes, self.name)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(28, 28)``; what :func:`ringfl.data.prepare` adapts."""
        return tuple(self.x.shape[1:])

    def class_counts(self) -> np.ndarray:
        """Samples per class, length ``num_classes``."""
        return np.bincount(self.y, minlength=self.num_classes)


@dataclass(frozen=True, eq=False)
class DataSplits:
    """A source's train and test sets; they share ``num_classes`` and sample shape."""

    train: Dataset
    test: Dataset

    def __post_init__(self) -> None:
        if self.train.num_classes != self.test.num_classes:
            raise DataError(
                f"{self.train.name} and {self.test.name} disagree on num_classes: "
                f"{self.train.num_classes} vs {self.test.num_classes}"
            )
        if self.train.sample_shape != self.test.sample_shape:
            raise DataError(
                f"{self.train.name} and {self.test.name} disagree on sample shape: "
                f"{self.train.sample_shape} vs {self.test.sample_shape}"
            )

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.train.sample_shape


def make_dataset(x: np.ndarray, y: np.ndarray, num_classes: int, name: str) -> Dataset:
    """Convert raw arrays (uint8 or [0, 1] float images, integer labels) into a read-only Dataset."""
    ds = Dataset(to_unit_images(x, name), to_labels(y, name), int(num_classes), name)
    ds.x.flags.writeable = False
    ds.y.flags.writeable = False
    return ds


def make_splits(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    name: str,
    num_classes: int | None = None,
) -> DataSplits:
    """Build both splits; ``num_classes`` defaults to one more than the largest label seen."""
    y_train, y_test = to_labels(train[1], f"{name}/train"), to_labels(test[1], f"{name}/test")
    if num_classes is None:
        num_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
    return DataSplits(
        make_dataset(train[0], y_train, num_classes, f"{name}/train"),
        make_dataset(test[0], y_test, num_classes, f"{name}/test"),
    )


def to_unit_images(x: np.ndarray, name: str) -> np.ndarray:
    """uint8 images are scaled by 1/255; float images must already lie in [0, 1]."""
    x = np.asarray(x)
    if not 2 <= x.ndim <= 4:
        raise DataError(
            f"{name}: images must have shape (N, D), (N, H, W) or (N, C, H, W), got {x.shape}"
        )
    if x.dtype == np.uint8:
        return np.divide(x, np.float32(255), dtype=np.float32)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{name}: images have dtype {x.dtype}; expected uint8 or float in [0, 1]")
    out = np.array(x, dtype=np.float32)  # a copy: make_dataset freezes it, not the caller's
    if out.size and not (np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0):
        raise DataError(
            f"{name}: float images must be finite and in [0, 1], found range "
            f"[{np.nanmin(out)}, {np.nanmax(out)}]"
        )
    return out


def to_labels(y: np.ndarray, name: str) -> np.ndarray:
    """Integer (or integral float) class labels as a 1-D int64 array; negatives are rejected."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{name}: labels must be 1-D, got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating) and np.array_equal(y, np.round(y)):
        y = y.astype(np.int64)  # e.g. labels saved from a float matrix
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)  # a copy: make_dataset freezes it, not the caller's
    _check_label_range(y, None, name)
    return y


def _check_label_range(y: np.ndarray, num_classes: int | None, name: str) -> None:
    if not y.size:
        return
    low, high = int(y.min()), int(y.max())
    if low < 0:
        raise DataError(f"{name}: label {low} is negative")
    if num_classes is not None and high >= num_classes:
        raise DataError(f"{name}: label {high} out of range for num_classes={num_classes}")
