"""Run configuration: defaults, YAML/JSON loading, overrides and one-line errors."""

import json

import pytest

from ringfl.config import RunConfig, load_config, parse_config
from ringfl.errors import ConfigError


def test_defaults_are_the_embedded_demo():
    config = load_config(None)
    assert (config.model, config.data, config.algorithm) == ("digits-mlp", "digits", "fedavg")


def test_yaml_and_json_give_the_same_config(tmp_path):
    data = {"rounds": 3, "training": {"lr": 0.05, "batch_size": 64}, "algorithm": "dssgd",
            "algorithm_settings": {"theta_u": 0.1}}
    (tmp_path / "c.json").write_text(json.dumps(data))
    (tmp_path / "c.yaml").write_text("rounds: 3\ntraining: {lr: 0.05, batch_size: 64}\n"
                                      "algorithm: dssgd\nalgorithm_settings: {theta_u: 0.1}\n")
    a, b = load_config(tmp_path / "c.json"), load_config(tmp_path / "c.yaml")
    assert a == b
    assert a.training.lr == 0.05 and a.training.batch_size == 64 and a.rounds == 3


def test_flags_override_file_values():
    config = RunConfig().replace(rounds=9, port=None)
    assert config.rounds == 9 and config.port == RunConfig().port


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"roundz": 3}, "unknown field 'roundz'"),
        ({"rounds": "five"}, "config.rounds: expected int"),
        ({"rounds": 0}, "rounds must be >= 1"),
        ({"training": {"lr": -1}}, "training.lr must be > 0"),
        ({"training": {"momentom": 0.9}}, "config.training: unknown field 'momentom'"),
        ({"acceptance": {"check_finite": "yes"}}, "must be true or false"),
        ({"order": "chaos"}, "order must be one of"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_configs_get_one_line_errors(data, message):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid JSON/YAML"):
        load_config(bad)
