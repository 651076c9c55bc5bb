"""Tests for ringfl.data: sources, IDX files, validation, partitions and preprocessing."""

from __future__ import annotations

import gzip
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ringfl.data import (
    FASHION_MNIST_DIR,
    KINDS,
    SOURCES,
    clear_cache,
    kind_params,
    label_skew,
    load_source,
    make_dataset,
    partition,
    peer_indices,
    prepare,
    read_idx,
    stratified_split,
    write_idx,
)
from ringfl.errors import DataError, RingflError

DISJOINT_KINDS = ("iid", "shards", "dirichlet")


@contextmanager
def raises_data_error(*fragments: str) -> Iterator[pytest.ExceptionInfo[DataError]]:
    """Expect a one-line DataError whose message contains every fragment."""
    with pytest.raises(DataError) as info:
        yield info
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def make_idx_dir(
    directory: Path, *, n_train: int = 30, n_test: int = 10, gz: bool = True, dotted: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Write a tiny MNIST-layout directory; return the train images and labels written."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    sep, ext = ("." if dotted else "-"), (".gz" if gz else "")
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 6, 5), dtype=np.uint8)
        labels = (np.arange(n) % 4).astype(np.uint8)
        write_idx(directory / f"{prefix}-images{sep}idx3-ubyte{ext}", images)
        write_idx(directory / f"{prefix}-labels{sep}idx1-ubyte{ext}", labels)
        arrays[prefix] = (images, labels)
    return arrays["train"]


def class_labels(per_class: int, num_classes: int) -> np.ndarray:
    return np.repeat(np.arange(num_classes), per_class)


# --- sources ------------------------------------------------------------------------------------


def test_digits_shapes_range_and_split():
    splits = load_source("digits")
    assert splits.train.x.shape[1:] == (8, 8) and splits.sample_shape == (8, 8)
    assert len(splits.train) + len(splits.test) == 1797
    assert len(splits.test) == pytest.approx(0.2 * 1797, abs=10)
    assert splits.num_classes == 10
    for ds in (splits.train, splits.test):
        assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
        assert ds.x.min() >= 0.0 and ds.x.max() == 1.0
        assert (ds.class_counts() > 0).all()  # stratified: every class in both splits
    assert load_source("digits") is splits  # cached per process


def test_loaded_arrays_are_read_only():
    splits = load_source("digits")
    with pytest.raises(ValueError):
        splits.train.x[0, 0, 0] = 1.0


def test_digits_split_is_deterministic():
    first = load_source("digits")
    clear_cache()
    second = load_source("digits")
    assert first is not second
    np.testing.assert_array_equal(first.train.y, second.train.y)
    np.testing.assert_array_equal(first.test.x, second.test.x)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    splits = load_source("fashion-mnist")
    assert splits.train.x.shape == (60000, 28, 28)
    assert splits.test.x.shape == (10000, 28, 28)
    assert splits.num_classes == 10
    assert (splits.train.class_counts() == 6000).all()
    assert splits.train.x.dtype == np.float32 and float(splits.train.x.max()) <= 1.0


def test_fashion_mnist_missing_dir_suggests_apt():
    with raises_data_error("/nonexistent", "apt-get install dataset-fashion-mnist"):
        load_source("fashion-mnist:/nonexistent")


def test_fashion_mnist_dir_missing_a_file_suggests_apt(tmp_path):
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with raises_data_error("t10k-labels-idx1-ubyte", "apt-get install dataset-fashion-mnist"):
        load_source(f"fashion-mnist:{tmp_path}")


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dotted", [True, False])
def test_idx_directory_source(tmp_path, gz, dotted):
    images, labels = make_idx_dir(tmp_path, gz=gz, dotted=dotted)
    splits = load_source(f"idx:{tmp_path}")
    assert splits.train.x.shape == (30, 6, 5) and splits.test.x.shape == (10, 6, 5)
    np.testing.assert_allclose(splits.train.x, images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(splits.train.y, labels)
    assert splits.num_classes == 4  # inferred from the labels
    assert load_source(f"idx:{tmp_path}") is splits


def test_fashion_mnist_with_explicit_dir_has_ten_classes(tmp_path):
    make_idx_dir(tmp_path)
    assert load_source(f"fashion-mnist:{tmp_path}").num_classes == 10


def test_cache_notices_rewritten_files(tmp_path):
    make_idx_dir(tmp_path, n_train=30)
    assert len(load_source(f"idx:{tmp_path}").train) == 30
    make_idx_dir(tmp_path, n_train=40)
    assert len(load_source(f"idx:{tmp_path}").train) == 40


def test_idx_directory_missing_file_is_named(tmp_path):
    make_idx_dir(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with raises_data_error(str(tmp_path), "train-images-idx3-ubyte"):
        load_source(f"idx:{tmp_path}")


def test_idx_labels_with_wrong_rank(tmp_path):
    make_idx_dir(tmp_path)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(bad, np.zeros((30, 2), np.uint8))
    with raises_data_error(str(bad), "rank-1"):
        load_source(f"idx:{tmp_path}")


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("mnist", ("'mnist'", *SOURCES)),
        ("", ("unknown data source",)),
        ("digits:extra", ("digits", "extra")),
        ("idx", ("idx:DIR",)),
        ("npz:", ("npz:FILE",)),
        ("npz:/nonexistent/data.npz", ("/nonexistent/data.npz",)),
        ("idx:/nonexistent/dir", ("/nonexistent/dir",)),
    ],
)
def test_bad_source_specs(spec, fragments):
    with raises_data_error(*fragments):
        load_source(spec)


def test_data_error_is_a_ringfl_error():
    assert issubclass(DataError, RingflError)


def test_num_classes_override(tmp_path):
    make_idx_dir(tmp_path)
    assert load_source(f"idx:{tmp_path}", num_classes=7).train.num_classes == 7
    with raises_data_error("label 3", "num_classes=3"):
        load_source(f"idx:{tmp_path}", num_classes=3)


# --- IDX format ---------------------------------------------------------------------------------

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@settings(max_examples=40, deadline=None)
@given(
    array=st.sampled_from(IDX_DTYPES).flatmap(
        lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=4, max_side=5))
    ),
    gz=st.booleans(),
)
def test_idx_round_trip(array, gz):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("a.idx.gz" if gz else "a.idx")
        write_idx(path, array)
        assert path.read_bytes().startswith(b"\x1f\x8b") == gz
        back = read_idx(path)
    assert back.shape == array.shape and back.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(back, array)


def test_idx_header_layout(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, np.array([1, 2, 3], np.uint8))
    assert path.read_bytes() == bytes.fromhex("00000801 00000003 010203")


@pytest.mark.parametrize(
    "content", [b"", b"\x00\x00", b"PK\x03\x04rest", b"\x00\x00\x0a\x01\x00\x00\x00\x01x"]
)
def test_idx_wrong_magic_names_file(tmp_path, content):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)
    with raises_data_error("magic", str(path)):
        read_idx(path)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_body(tmp_path, gz):
    path = tmp_path / "images"
    data = bytes.fromhex("00000803 00000002 00000002 00000002") + bytes(7)  # needs 8
    path.write_bytes(gzip.compress(data) if gz else data)
    with raises_data_error("truncated", str(path), "needs 8 bytes, found 7"):
        read_idx(path)


def test_idx_truncated_header_and_trailing_bytes(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(bytes.fromhex("00000803 00000002"))
    with raises_data_error("truncated IDX header", str(path)):
        read_idx(path)
    path.write_bytes(bytes.fromhex("00000801 00000001") + b"\x01\x02")
    with raises_data_error("trailing bytes", str(path)):
        read_idx(path)


def test_idx_truncated_gzip_stream(tmp_path):
    path = tmp_path / "x.gz"
    write_idx(path, np.arange(1000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-20])
    with raises_data_error("gzip", str(path)):
        read_idx(path)


def test_idx_missing_file_and_unsupported_dtype(tmp_path):
    with raises_data_error("not found", "nope"):
        read_idx(tmp_path / "nope")
    with raises_data_error("uint16"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint16))


# --- npz and validation -------------------------------------------------------------------------


def save_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_without_test_split_is_split_deterministically(tmp_path):
    x = np.random.default_rng(0).random((100, 4, 4))
    y = class_labels(25, 4)
    splits = load_source(save_npz(tmp_path / "d.npz", x=x, y=y))
    assert (len(splits.train), len(splits.test)) == (80, 20)
    assert (splits.test.class_counts() == 5).all()
    train_idx, test_idx = stratified_split(y)
    np.testing.assert_allclose(splits.test.x, x[test_idx].astype(np.float32))
    assert not np.intersect1d(train_idx, test_idx).size


def test_npz_with_test_split_and_uint8_images(tmp_path):
    x = np.full((6, 3), 255, np.uint8)
    spec = save_npz(tmp_path / "d.npz", x=x, y=np.arange(6) % 3, x_test=x[:2], y_test=[0, 1])
    splits = load_source(spec)
    assert (len(splits.train), len(splits.test), splits.num_classes) == (6, 2, 3)
    assert splits.train.x.max() == 1.0


@pytest.mark.parametrize(
    ("arrays", "fragments"),
    [
        ({"x": np.zeros((4, 2))}, ("no array 'y'", "found: x")),
        ({"images": np.zeros((4, 2)), "labels": np.zeros(4)}, ("no array 'x'", "images, labels")),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4), "x_test": np.zeros((1, 2))}, ("y_test",)),
        ({"x": np.zeros((4, 2)), "y": np.zeros(5)}, ("4 samples", "5")),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, -1, 0])}, ("label -1", "negative")),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 0.5, 0])}, ("labels must be integers",)),
        ({"x": np.full((4, 2), 3.0), "y": np.zeros(4, int)}, ("[0, 1]",)),
        ({"x": np.zeros((4, 2), np.int32), "y": np.zeros(4, int)}, ("int32", "uint8")),
        ({"x": np.zeros(4), "y": np.zeros(4, int)}, ("got (4,)",)),
    ],
)
def test_npz_validation(tmp_path, arrays, fragments):
    path = tmp_path / "bad.npz"
    with raises_data_error(*fragments):
        load_source(save_npz(path, **arrays))


def test_npz_not_an_archive(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"this is not a zip file")
    with raises_data_error("cannot read npz", str(path)):
        load_source(f"npz:{path}")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with raises_data_error("single array", str(single)):
        load_source(f"npz:{single}")


def test_make_dataset_validation():
    x = np.zeros((3, 2, 2), np.float32)
    with raises_data_error("label 5", "num_classes=5"):
        make_dataset(x, [0, 1, 5], 5, "toy")
    with raises_data_error("label -2"):
        make_dataset(x, [0, -2, 1], 5, "toy")
    with raises_data_error("3 samples", "2"):
        make_dataset(x, [0, 1], 5, "toy")
    with raises_data_error("1-D"):
        make_dataset(x, np.zeros((3, 1), int), 5, "toy")


def test_make_dataset_does_not_freeze_caller_arrays():
    x, y = np.zeros((3, 2), np.float32), np.zeros(3, np.int64)
    make_dataset(x, y, 2, "toy")
    assert x.flags.writeable and y.flags.writeable


# --- partitions ---------------------------------------------------------------------------------


def assert_disjoint_covering(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))
    for part in parts:
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)


PARAMS = {"iid": {}, "shards": {"shards_per_peer": 2}, "dirichlet": {"alpha": 0.5}}


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(DISJOINT_KINDS),
    labels=hnp.arrays(np.int64, st.integers(8, 300), elements=st.integers(0, 9)),
    num_peers=st.integers(1, 4),
    seed=st.integers(0, 2**32),
)
def test_disjoint_kinds_cover_everything(kind, labels, num_peers, seed):
    parts = partition(labels, kind, num_peers, seed, **PARAMS[kind])
    assert len(parts) == num_peers
    assert_disjoint_covering(parts, len(labels))
    assert all(len(p) > 0 for p in parts)


@pytest.mark.parametrize("kind", KINDS)
def test_partitions_are_deterministic_and_seed_dependent(kind):
    labels = class_labels(50, 10)
    params = {"size": 100} if kind == "sample" else PARAMS[kind]
    first = partition(labels, kind, 5, 7, **params)
    again = partition(labels.copy(), kind, 5, 7, **params)
    other = partition(labels, kind, 5, 8, **params)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    for i in range(5):
        np.testing.assert_array_equal(peer_indices(labels, kind, 5, 7, i, **params), first[i])


def test_iid_shares_are_nearly_equal():
    sizes = [len(p) for p in partition(103, "iid", 10, 0)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 103


def test_shards_give_each_peer_few_labels():
    labels = np.random.default_rng(1).permutation(class_labels(100, 10))
    parts = partition(labels, "shards", 10, 3, shards_per_peer=2)
    assert_disjoint_covering(parts, 1000)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    assert {len(p) for p in parts} == {100}


def test_shards_need_enough_samples():
    with raises_data_error("20 shards", "shards_per_peer=2"):
        partition(class_labels(1, 10), "shards", 10, 0)


def test_dirichlet_skew_grows_as_alpha_falls():
    labels = class_labels(300, 10)
    skew = {
        alpha: np.mean(
            [
                label_skew(labels, partition(labels, "dirichlet", 20, s, alpha=alpha))
                for s in range(3)
            ]
        )
        for alpha in (100.0, 1.0, 0.1)
    }
    assert skew[100.0] < 0.1 < skew[1.0] < skew[0.1]


def test_dirichlet_tiny_alpha_still_feeds_every_peer():
    labels = class_labels(6, 10)
    parts = partition(labels, "dirichlet", 50, 0, alpha=1e-4)
    assert_disjoint_covering(parts, 60)
    assert min(len(p) for p in parts) >= 1


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf"), "lots"])
def test_dirichlet_rejects_bad_alpha(alpha):
    with raises_data_error("alpha", "positive"):
        partition(class_labels(10, 2), "dirichlet", 2, 0, alpha=alpha)


def test_sample_sizes_exact_overlap_allowed_and_independent_of_peer_count():
    parts = partition(1000, "sample", 4, 5, size=600)
    for part in parts:
        assert len(part) == 600 and len(np.unique(part)) == 600 and part.max() < 1000
    assert len(np.intersect1d(parts[0], parts[1])) > 0  # 600 + 600 > 1000 must overlap
    np.testing.assert_array_equal(partition(1000, "sample", 9, 5, size=600)[2], parts[2])
    np.testing.assert_array_equal(peer_indices(1000, "sample", 4, 5, 3, size=600), parts[3])


def test_sample_default_size_is_600_and_more_peers_than_samples_is_fine():
    assert [len(p) for p in partition(60000, "sample", 2, 0)] == [600, 600]
    assert len(partition(5, "sample", 10, 0, size=3)) == 10
    with raises_data_error("size=601", "600"):
        partition(600, "sample", 2, 0, size=601)


@pytest.mark.parametrize("kind", DISJOINT_KINDS)
def test_more_peers_than_samples(kind):
    with raises_data_error("5 samples", "6 peers"):
        partition(np.zeros(5, int), kind, 6, 0)


@pytest.mark.parametrize("index", [-1, 4, True, 1.0])
def test_peer_index_out_of_range(index):
    with raises_data_error("peer index", "4 peers"):
        peer_indices(100, "iid", 4, 0, index)


@pytest.mark.parametrize(
    ("call", "fragments"),
    [
        (lambda: partition(10, "random", 2, 0), ("'random'", *KINDS)),
        (lambda: partition(10, "iid", 2, 0, alpha=1.0), ("'alpha'", "none")),
        (lambda: partition(10, "sample", 2, 0, alpha=1.0), ("'alpha'", "size")),
        (lambda: partition(10, "dirichlet", 2, 0), ("label array",)),
        (lambda: partition(10, "iid", 0, 0), ("num_peers",)),
        (lambda: partition(10, "iid", 2, -1), ("seed",)),
        (lambda: partition(np.array([0, -1]), "iid", 2, 0), ("negative",)),
        (lambda: partition(10, "sample", 2, 0, size=0), ("size",)),
    ],
)
def test_partition_argument_errors(call, fragments):
    with raises_data_error(*fragments):
        call()


def test_kind_params():
    assert kind_params("iid") == ()
    assert kind_params("dirichlet") == ("alpha",)
    assert kind_params("shards") == ("shards_per_peer",)
    assert kind_params("sample") == ("size",)
    with raises_data_error("valid kinds"):
        kind_params("nope")


def test_label_skew_extremes():
    labels = class_labels(10, 4)
    assert label_skew(labels, [np.arange(40)]) == 0.0
    by_class = [np.flatnonzero(labels == c) for c in range(4)]
    assert label_skew(labels, by_class) == pytest.approx(0.75)
    with raises_data_error("empty"):
        label_skew(labels, [np.arange(40), np.zeros(0, int)])


# --- preprocessing ------------------------------------------------------------------------------


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).random((5, 28, 28), dtype=np.float32)


def assert_prepared(out: np.ndarray, shape: tuple[int, ...]) -> None:
    assert out.shape == shape and out.dtype == np.float32 and out.flags.c_contiguous


def test_prepare_flatten(images):
    out = prepare(images, (784,))
    assert_prepared(out, (5, 784))
    np.testing.assert_array_equal(out[1], images[1].ravel())


def test_prepare_channel_and_rows(images):
    with_channel = prepare(images, (1, 28, 28))
    assert_prepared(with_channel, (5, 1, 28, 28))
    rows = prepare(with_channel, (28, 28))
    assert_prepared(rows, (5, 28, 28))
    np.testing.assert_array_equal(rows, images)
    np.testing.assert_array_equal(prepare(images.reshape(5, 784), [1, 28, 28]), with_channel)


def test_prepare_pads_centered(images):
    out = prepare(images, (1, 32, 32))
    assert_prepared(out, (5, 1, 32, 32))
    np.testing.assert_array_equal(out[:, 0, 2:30, 2:30], images)
    assert out.sum() == pytest.approx(images.sum(), rel=1e-5)  # border is all zeros


def test_prepare_odd_padding_and_digits_shapes():
    x = np.ones((2, 8, 8), np.float32)
    odd = prepare(x, (1, 11, 11))
    np.testing.assert_array_equal(np.flatnonzero(odd[0, 0].any(axis=1)), np.arange(1, 9))
    assert_prepared(prepare(x, (64,)), (2, 64))
    assert_prepared(prepare(x, (1, 8, 8)), (2, 1, 8, 8))


def test_prepare_non_contiguous_input(images):
    assert_prepared(prepare(images[:, ::2, ::2], (14, 14)), (5, 14, 14))


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [((1, 16, 16), "smaller"), ((3, 28, 28), "channel"), ((100,), "no reshape"), ((), "invalid")],
)
def test_prepare_mismatch_names_both_shapes(images, shape, fragment):
    with raises_data_error(fragment, str(tuple(shape))):
        prepare(images, shape)
    if shape:
        with raises_data_error("(28, 28)"):
            prepare(images, shape)
