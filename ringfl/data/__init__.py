"""Data layer: named sources, IDX files, peer partitions and model-input preprocessing.

Typical use by a peer::

    splits = load_source("fashion-mnist")
    mine = peer_indices(splits.train.y, "dirichlet", num_peers, seed, index, alpha=0.5)
    xb = prepare(splits.train.x[mine[:32]], model_input_shape)  # one batch

See ``docs/data.md`` for the spec strings, partition kinds and errors.
"""

from ringfl.data.dataset import Dataset, DataSplits, make_dataset, make_splits
from ringfl.data.idx import read_idx, write_idx
from ringfl.data.partition import KINDS, kind_params, label_skew, partition, peer_indices
from ringfl.data.preprocess import prepare
from ringfl.data.sources import (
    FASHION_MNIST_DIR,
    SOURCES,
    clear_cache,
    load_source,
    stratified_split,
    with_num_classes,
)

__all__ = [
    "FASHION_MNIST_DIR",
    "KINDS",
    "SOURCES",
    "DataSplits",
    "Dataset",
    "clear_cache",
    "kind_params",
    "label_skew",
    "load_source",
    "make_dataset",
    "make_splits",
    "partition",
    "peer_indices",
    "prepare",
    "read_idx",
    "stratified_split",
    "with_num_classes",
    "write_idx",
]
