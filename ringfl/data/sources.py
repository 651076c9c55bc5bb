"""Named data sources, chosen by one spec string such as ``digits`` or ``idx:/data/mnist``.

Loads are cached per process, keyed on the resolved path and the files' mtime and size, because
many in-process peers ask for the same source and must share one read-only copy of the arrays.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from ringfl.data.dataset import DataSplits, make_splits, to_labels, to_unit_images
from ringfl.data.idx import read_idx
from ringfl.errors import DataError

#: Where the Debian package ``dataset-fashion-mnist`` installs the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Spec forms accepted by :func:`load_source`, as shown in error messages.
SOURCES = ("digits", "fashion-mnist[:DIR]", "idx:DIR", "npz:FILE")
#: Held-out fraction and seed for sources without an official test split (digits, npz).
TEST_FRACTION = 0.2
SPLIT_SEED = 0

_FASHION_HINT = (
    "; to get Fashion-MNIST run `apt-get install dataset-fashion-mnist` or pass fashion-mnist:DIR"
)
_IDX_PARTS = {  # role -> (file stem, IDX rank)
    "train_images": ("train-images", 3),
    "train_labels": ("train-labels", 1),
    "test_images": ("t10k-images", 3),
    "test_labels": ("t10k-labels", 1),
}
_FileKey = tuple[tuple[Path, int, int], ...]  # (resolved path, mtime_ns, size) per file


def load_source(spec: str, *, num_classes: int | None = None) -> DataSplits:
    """Load the train/test splits named by ``spec``; ``num_classes`` overrides the inferred count.

    Forms: ``digits``, ``fashion-mnist`` or ``fashion-mnist:DIR``, ``idx:DIR``, ``npz:FILE``.
    """
    name, _, arg = spec.strip().partition(":")
    loader = _LOADERS.get(name.lower())
    if loader is None:
        raise DataError(f"unknown data source {spec!r}; valid sources: {', '.join(SOURCES)}")
    splits = loader(arg.strip())
    return splits if num_classes is None else with_num_classes(splits, num_classes)


def with_num_classes(splits: DataSplits, num_classes: int) -> DataSplits:
    """Widen (or check) the class count, e.g. for a model with more outputs than labels seen."""
    return DataSplits(
        dataclasses.replace(splits.train, num_classes=int(num_classes)),
        dataclasses.replace(splits.test, num_classes=int(num_classes)),
    )


def stratified_split(
    y: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices holding out ``test_fraction`` of every class.

    Used where a source has no official split, so results are comparable across runs.
    """
    rng = np.random.default_rng(seed)
    test_parts = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        take = int(round(len(members) * test_fraction))
        test_parts.append(rng.permutation(members)[:take])
    test = np.sort(np.concatenate(test_parts)) if test_parts else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(y)), test, assume_unique=True)
    if not len(train) or not len(test):
        raise DataError(f"cannot split {len(y)} samples into non-empty train and test sets")
    return train, test


def clear_cache() -> None:
    """Forget every cached load (tests, or a long-lived process that rewrites its data files)."""
    for cached in (_load_digits, _load_idx_files, _load_npz_file):
        cached.cache_clear()


# --- per-source loaders -------------------------------------------------------------------------


def _digits(arg: str) -> DataSplits:
    if arg:
        raise DataError(f"source 'digits' takes no argument, got {arg!r}")
    return _load_digits()


def _fashion_mnist(arg: str) -> DataSplits:
    directory = Path(arg).expanduser() if arg else FASHION_MNIST_DIR
    key = _file_key(_find_idx_files(directory, hint=_FASHION_HINT))
    return _load_idx_files(key, "fashion-mnist", 10)


def _idx(arg: str) -> DataSplits:
    directory = Path(_require_arg("idx", arg, "DIR")).expanduser()
    return _load_idx_files(_file_key(_find_idx_files(directory)), f"idx:{directory}", None)


def _npz(arg: str) -> DataSplits:
    path = Path(_require_arg("npz", arg, "FILE")).expanduser()
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    return _load_npz_file(_file_key([path]))


_LOADERS: dict[str, Callable[[str], DataSplits]] = {
    "digits": _digits,
    "fashion-mnist": _fashion_mnist,
    "idx": _idx,
    "npz": _npz,
}


def _require_arg(source: str, arg: str, what: str) -> str:
    if not arg:
        raise DataError(f"source '{source}' needs a {what}: write {source}:{what}")
    return arg


def _file_key(paths: list[Path]) -> _FileKey:
    """Cache key that changes when a file is replaced, so stale arrays are never served."""
    key = []
    for path in paths:
        resolved = path.resolve()
        stat = resolved.stat()
        key.append((resolved, stat.st_mtime_ns, stat.st_size))
    return tuple(key)


def _find_idx_files(directory: Path, hint: str = "") -> list[Path]:
    """The four MNIST-layout files, accepting ``-idx3-``/``.idx3-`` names with or without .gz."""
    if not directory.is_dir():
        raise DataError(f"IDX directory not found: {directory}{hint}")
    found, missing = [], []
    for stem, rank in _IDX_PARTS.values():
        names = [f"{stem}-idx{rank}-ubyte", f"{stem}.idx{rank}-ubyte"]
        candidates = [directory / (n + gz) for n in names for gz in ("", ".gz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(f"{names[0]}[.gz]")
        else:
            found.append(path)
    if missing:
        raise DataError(f"IDX directory {directory} has no {', '.join(missing)}{hint}")
    return found


@lru_cache(maxsize=1)
def _load_digits() -> DataSplits:
    from sklearn.datasets import load_digits  # deferred: importing sklearn costs ~0.5 s

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)  # 8x8 pixels with values 0..16
    y = bunch.target
    train, test = stratified_split(y)
    return make_splits((x[train], y[train]), (x[test], y[test]), "digits", num_classes=10)


@lru_cache(maxsize=4)
def _load_idx_files(key: _FileKey, name: str, num_classes: int | None) -> DataSplits:
    arrays = {}
    for (role, (_, rank)), (path, _, _) in zip(_IDX_PARTS.items(), key):
        arrays[role] = read_idx(path)
        if arrays[role].ndim != rank:
            raise DataError(
                f"{path}: expected a rank-{rank} IDX array, got shape {arrays[role].shape}"
            )
    return make_splits(
        (arrays["train_images"], arrays["train_labels"]),
        (arrays["test_images"], arrays["test_labels"]),
        name,
        num_classes,
    )


@lru_cache(maxsize=4)
def _load_npz_file(key: _FileKey) -> DataSplits:
    path = key[0][0]
    arrays = _read_npz(path)
    name = f"npz:{path}"
    for required in ("x", "y"):
        if required not in arrays:
            raise DataError(
                f"{path} has no array {required!r} (found: {', '.join(sorted(arrays)) or 'none'})"
            )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path} must contain both 'x_test' and 'y_test' or neither")
    if "x_test" in arrays:
        return make_splits((arrays["x"], arrays["y"]), (arrays["x_test"], arrays["y_test"]), name)
    x, y = to_unit_images(arrays["x"], name), to_labels(arrays["y"], name)  # check before splitting
    if len(x) != len(y):
        raise DataError(f"{path}: 'x' has {len(x)} samples but 'y' has {len(y)}")
    train, test = stratified_split(y)
    return make_splits((x[train], y[train]), (x[test], y[test]), name)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{path} holds a single array; expected an .npz archive with x and y")
        with archive:
            return {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read npz file {path}: {exc}") from None
