"""Split a training set among peers, deterministically from (seed, num_peers, peer index).

Every peer can compute its own share without talking to anyone, and peers hold sorted int64
index arrays into the shared read-only arrays of a :class:`~ringfl.data.Dataset`, never copies.

Kinds (parameters in brackets):

* ``iid``: shuffle, then cut into nearly equal disjoint shards covering every sample.
* ``shards`` [``shards_per_peer=2``]: McMahan et al.'s pathological non-IID split; sort by label,
  cut into ``num_peers * shards_per_peer`` shards, deal ``shards_per_peer`` to each peer.
* ``dirichlet`` [``alpha=0.5``]: per class, peer proportions ~ Dir(alpha); smaller alpha means
  more label skew. Disjoint and covering; every peer gets at least one sample.
* ``sample`` [``size=600``]: each peer independently draws ``size`` indices without replacement
  from the whole set (Shokri & Shmatikov's setting); shares may overlap.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ringfl.data.dataset import to_labels
from ringfl.errors import DataError

Data = int | np.ndarray  # a sample count, or the labels when the kind needs them


def partition(
    data: Data, kind: str, num_peers: int, seed: int, **params: object
) -> list[np.ndarray]:
    """Every peer's sorted int64 indices; ``data`` is the sample count or the label array."""
    spec, n, labels = _resolve(data, kind, num_peers, seed, params)
    return _split(spec, n, labels, num_peers, seed, params)


def peer_indices(
    data: Data, kind: str, num_peers: int, seed: int, index: int, **params: object
) -> np.ndarray:
    """Peer ``index``'s share, identical to ``partition(...)[index]``."""
    spec, n, labels = _resolve(data, kind, num_peers, seed, params)
    if not _is_int(index) or not 0 <= index < num_peers:
        raise DataError(f"peer index {index!r} out of range for {num_peers} peers")
    if spec.one_peer is not None:  # independent per peer: skip computing everyone else's share
        return spec.one_peer(n, seed, int(index), **params)
    return _split(spec, n, labels, num_peers, seed, params)[index]


def kind_params(kind: str) -> tuple[str, ...]:
    """The keyword parameters ``kind`` accepts, so a config holding every kind's settings can pass
    only the relevant ones (unknown parameters are rejected to catch typos)."""
    return _kind(kind).params


def label_skew(
    labels: np.ndarray, parts: list[np.ndarray], num_classes: int | None = None
) -> float:
    """Mean total-variation distance between each peer's label distribution and the global one.

    0 for a perfectly IID split; approaches 1 - 1/num_classes when each peer holds one class.
    """
    labels = to_labels(labels, "label_skew labels")
    k = int(labels.max(initial=-1)) + 1 if num_classes is None else int(num_classes)
    if labels.size and labels.max() >= k:
        raise DataError(f"label_skew: label {labels.max()} out of range for num_classes={k}")
    if not parts or any(len(p) == 0 for p in parts):
        raise DataError("label_skew needs at least one peer and no empty shares")
    owner = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    counts = np.bincount(owner * k + labels[np.concatenate(parts)], minlength=len(parts) * k)
    local = counts.reshape(len(parts), k) / np.array([len(p) for p in parts])[:, None]
    overall = np.bincount(labels, minlength=k) / len(labels)
    return float(np.mean(0.5 * np.abs(local - overall).sum(axis=1)))


# --- the kinds ----------------------------------------------------------------------------------


def _iid(n: int, labels: np.ndarray | None, num_peers: int, seed: int) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng(seed).permutation(n), num_peers)


def _shards(
    n: int, labels: np.ndarray, num_peers: int, seed: int, *, shards_per_peer: int = 2
) -> list[np.ndarray]:
    per_peer = _positive_int("shards_per_peer", shards_per_peer)
    total = num_peers * per_peer
    if total > n:
        raise DataError(
            f"cannot cut {n} samples into {total} shards "
            f"({num_peers} peers x shards_per_peer={per_peer})"
        )
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(n)  # so each class's samples are dealt in random order
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, total)
    deal = rng.permutation(total).reshape(num_peers, per_peer)
    return [np.concatenate([shards[s] for s in row]) for row in deal]


def _dirichlet(
    n: int, labels: np.ndarray, num_peers: int, seed: int, *, alpha: float = 0.5
) -> list[np.ndarray]:
    alpha = _positive_float("alpha", alpha)
    rng = np.random.default_rng(seed)
    owner = np.empty(n, np.int64)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        cuts = np.round(np.cumsum(_dirichlet_draw(rng, alpha, num_peers)) * len(members))
        sizes = np.diff(np.concatenate([[0], np.clip(cuts, 0, len(members))])).astype(np.int64)
        sizes[-1] += len(members) - sizes.sum()  # absorb rounding so the class is covered
        owner[members] = np.repeat(np.arange(num_peers), sizes)
    _give_every_peer_a_sample(owner, num_peers)
    order = np.argsort(owner, kind="stable")
    return np.split(order, np.cumsum(np.bincount(owner, minlength=num_peers))[:-1])


def _dirichlet_draw(rng: np.random.Generator, alpha: float, k: int) -> np.ndarray:
    """Dir(alpha) via normalised gammas; at tiny alpha every gamma can underflow to 0, where
    numpy's own ``dirichlet`` returns NaN, so fall back to the limit: one peer takes all."""
    gammas = rng.standard_gamma(alpha, size=k)
    total = gammas.sum()
    if total > 0 and np.isfinite(total):
        return gammas / total
    onehot = np.zeros(k)
    onehot[rng.integers(k)] = 1.0
    return onehot


def _give_every_peer_a_sample(owner: np.ndarray, num_peers: int) -> None:
    """Deterministic fix-up: each empty peer takes one sample from the currently largest peer."""
    counts = np.bincount(owner, minlength=num_peers)
    for peer in np.flatnonzero(counts == 0):
        donor = int(np.argmax(counts))
        owner[np.flatnonzero(owner == donor)[0]] = peer
        counts[donor] -= 1
        counts[peer] += 1


def _sample(
    n: int, labels: np.ndarray | None, num_peers: int, seed: int, *, size: int = 600
) -> list[np.ndarray]:
    return [_sample_peer(n, seed, i, size=size) for i in range(num_peers)]


def _sample_peer(n: int, seed: int, index: int, *, size: int = 600) -> np.ndarray:
    size = _positive_int("size", size)
    if size > n:
        raise DataError(f"sample size={size} exceeds the {n} available samples")
    rng = np.random.default_rng([seed, index])  # independent of num_peers and other peers
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)


@dataclass(frozen=True)
class _Kind:
    split: Callable[..., list[np.ndarray]]
    needs_labels: bool = False
    disjoint: bool = True  # disjoint kinds need at least one sample per peer
    one_peer: Callable[..., np.ndarray] | None = None

    @property
    def params(self) -> tuple[str, ...]:
        sig = inspect.signature(self.split).parameters.values()
        return tuple(p.name for p in sig if p.kind is inspect.Parameter.KEYWORD_ONLY)


_KINDS: dict[str, _Kind] = {
    "iid": _Kind(_iid),
    "shards": _Kind(_shards, needs_labels=True),
    "dirichlet": _Kind(_dirichlet, needs_labels=True),
    "sample": _Kind(_sample, disjoint=False, one_peer=_sample_peer),
}
#: Valid values of ``kind``.
KINDS = tuple(_KINDS)


def _split(
    spec: _Kind,
    n: int,
    labels: np.ndarray | None,
    num_peers: int,
    seed: int,
    params: dict[str, object],
) -> list[np.ndarray]:
    parts = spec.split(n, labels, num_peers, seed, **params)
    return [np.sort(part).astype(np.int64, copy=False) for part in parts]


def _kind(kind: str) -> _Kind:
    spec = _KINDS.get(kind)
    if spec is None:
        raise DataError(f"unknown partition kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    return spec


def _resolve(
    data: Data, kind: str, num_peers: int, seed: int, params: dict[str, object]
) -> tuple[_Kind, int, np.ndarray | None]:
    """Validate the shared arguments; return the kind, the sample count and the labels."""
    spec = _kind(kind)
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        allowed = ", ".join(spec.params) or "none"
        raise DataError(
            f"partition {kind!r} got unknown parameter {unknown[0]!r} (accepted: {allowed})"
        )
    num_peers = _positive_int("num_peers", num_peers)
    if not _is_int(seed) or seed < 0:
        raise DataError(f"partition seed must be a non-negative integer, got {seed!r}")
    if _is_int(data):
        if spec.needs_labels:
            raise DataError(f"partition {kind!r} needs the label array, not a sample count")
        n, labels = int(data), None
        if n < 0:
            raise DataError(f"sample count must be >= 0, got {n}")
    else:
        labels = to_labels(data, "partition labels")
        n = len(labels)
    if spec.disjoint and num_peers > n:
        raise DataError(
            f"cannot split {n} samples among {num_peers} peers: more peers than samples"
        )
    return spec, n, labels


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _positive_int(name: str, value: object) -> int:
    if not _is_int(value) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_float(name: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise DataError(f"{name} must be a positive number, got {value!r}")
    return number
