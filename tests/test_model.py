"""Model specs (validation, shapes, counts, hashing) and the Gluon runtime (flat vectors, training)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

from ringfl.errors import SpecError
from ringfl.model import describe, load_spec, parse_spec
from ringfl.model.runtime import Model, shared_model

MLP = {
    "input_shape": [64],
    "num_classes": 10,
    "layers": [{"type": "dense", "units": 32, "activation": "relu"}, {"type": "dense", "units": 10}],
}


def test_shipped_parameter_counts():
    assert load_spec("cnn").num_params == 105_506
    assert load_spec("mlp").num_params == 109_386
    cnn28 = dict(load_spec("cnn").raw, input_shape=[1, 28, 28])
    assert parse_spec(cnn28).num_params == 105_506  # pooling floors 8x8 -> 4x4 -> 2x2 as on 32x32
    assert "105,506" in describe(load_spec("cnn"))


@pytest.mark.parametrize("name", ["mlp", "cnn", "rnn", "digits-mlp"])
def test_runtime_matches_spec_count_and_round_trips(name):
    spec = load_spec(name)
    model = shared_model(spec)
    assert model.num_params == spec.num_params
    flat = model.init_params(seed=3)
    gluon = model._gluon
    model.thread.call(gluon.set_flat, flat)
    assert np.array_equal(model.thread.call(gluon.get_flat), flat)
    assert [s.offset for s in model.layout] == sorted(s.offset for s in model.layout)
    assert model.layout[-1].stop == model.num_params


def test_init_is_deterministic_from_seed():
    model = shared_model(load_spec("digits-mlp"))
    assert np.array_equal(model.init_params(7), model.init_params(7))
    assert not np.array_equal(model.init_params(7), model.init_params(8))


def test_hash_ignores_key_order_and_whitespace(tmp_path):
    a = parse_spec(MLP)
    text = json.dumps(dict(reversed(list(MLP.items()))), indent=4)
    path = tmp_path / "spec.json"
    path.write_text(text)
    assert load_spec(path).hash == a.hash
    yaml_path = tmp_path / "spec.yaml"
    yaml_path.write_text("input_shape: [64]\nnum_classes: 10\nlayers:\n  - {type: dense, units: 32, activation: relu}\n  - {type: dense, units: 10}\n")
    assert load_spec(yaml_path).hash == a.hash
    changed = dict(MLP, layers=[{"type": "dense", "units": 33, "activation": "relu"}, MLP["layers"][1]])
    assert parse_spec(changed).hash != a.hash


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (dict(MLP, layers=[{"type": "warp"}]), "unknown type 'warp'"),
        ({"input_shape": [1, 8, 8], "layers": [{"type": "maxpool", "pool": 9}, {"type": "dense", "units": 10}]}, "below 1x1"),
        ({"input_shape": [64], "layers": [{"type": "conv2d", "channels": 4, "kernel": 3}]}, "(channels, height, width)"),
        (dict(MLP, layers=[{"type": "dense", "units": 5}]), "num_classes is 10"),
        (dict(MLP, input_shape=[0]), "input_shape"),
        (dict(MLP, layers=[{"type": "dense", "units": 10, "activation": "swish"}]), "unknown activation"),
        (dict(MLP, layers=[]), "non-empty"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_invalid_specs_give_one_line_errors(spec, message):
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_spec_file_that_is_not_json_or_yaml(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON/YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="neither a shipped spec"):
        load_spec(tmp_path / "missing.json")


def test_custom_model_class_is_loaded_locally():
    spec = parse_spec({"input_shape": [64], "custom": "tests.fixtures.custom_models:TinyNet", "options": {"hidden": 8}})
    model = Model(spec)
    assert model.num_params == 64 * 8 + 8 + 8 * 10 + 10
    with pytest.raises(SpecError, match="cannot be loaded"):
        Model(parse_spec({"input_shape": [64], "custom": "tests.fixtures.custom_models:Missing"}))
    with pytest.raises(SpecError, match="must subclass"):
        Model(parse_spec({"input_shape": [64], "custom": "tests.fixtures.custom_models:NotAModel"}))


def _digits():
    data = load_digits()
    return (data.data / 16).astype(np.float32), data.target.astype(np.int64)


def test_training_lowers_loss_and_raises_accuracy_on_digits():
    x, y = _digits()
    model = shared_model(load_spec("digits-mlp"))
    start = model.init_params(0)
    loss0, acc0 = model.evaluate_sync(start, x, y)
    result = model.train_sync(start, x, y, lr=0.1, batch_size=32, epochs=3, seed=1)
    loss1, acc1 = model.evaluate_sync(result.params, x, y)
    assert loss1 < 0.5 * loss0 and acc1 > acc0 + 0.5
    assert result.samples == 3 * len(y)


def test_steps_momentum_and_determinism():
    x, y = _digits()
    model = shared_model(load_spec("digits-mlp"))
    start = model.init_params(0)
    a = model.train_sync(start, x, y, lr=0.05, batch_size=16, steps=5, momentum=0.9, seed=4)
    b = model.train_sync(start, x, y, lr=0.05, batch_size=16, steps=5, momentum=0.9, seed=4)
    assert a.samples == 80
    assert np.array_equal(a.params, b.params)


def test_fedsgd_gradient_matches_a_small_step():
    x, y = _digits()
    model = shared_model(load_spec("digits-mlp"))
    params = model.init_params(0)
    grad = model.thread.call(model._gluon.gradient, params, x, y)
    loss_before, _ = model.evaluate_sync(params, x, y)
    loss_after, _ = model.evaluate_sync(params - 0.5 * grad, x, y)
    assert loss_after < loss_before


def test_engine_banner_is_not_printed_when_the_launchers_choose_the_engine():
    """Peer processes get MXNET_ENGINE_TYPE=NaiveEngine; MXNet's banner must not reach the terminal."""
    code = ("import sys; from ringfl.model.gluon import GluonModel; from ringfl.model import load_spec; "
            "GluonModel(load_spec('mlp')); print('still here', file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MXNET_ENGINE_TYPE": "NaiveEngine"})
    assert done.returncode == 0, done.stderr
    assert "still here" in done.stderr and "start using engine" not in done.stderr
