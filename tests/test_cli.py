"""The ``ringfl`` command: real invocations, one-line errors with exit status 2."""

import pytest

from ringfl.cli import main


def test_model_show_prints_cnn_parameter_count(capsys):
    assert main(["model", "show", "cnn"]) == 0
    assert "105,506" in capsys.readouterr().out


def test_train_prints_per_epoch_accuracy_on_digits(capsys):
    assert main(["train", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "epoch   2" in out and "accuracy" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["model", "show", "no-such-model"], "neither a shipped spec"),
        (["train", "--data", "fashion-mnist:/no/such/dir"], "apt-get install dataset-fashion-mnist"),
        (["train", "--data", "mnist"], "unknown data source"),
    ],
)
def test_bad_input_is_one_line_error_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_token_commands_write_a_run_token_and_per_peer_tokens(tmp_path, capsys):
    import stat

    from ringfl.config import load_token
    from ringfl.protocol import peer_token

    run = tmp_path / "run.token"
    assert main(["token", "new", str(run)]) == 0
    assert main(["token", "peer", "alice", "--token-file", str(run), "--out", str(tmp_path / "alice.token")]) == 0
    assert load_token(str(tmp_path / "alice.token")) == peer_token(load_token(str(run)), "alice")
    assert stat.S_IMODE((tmp_path / "alice.token").stat().st_mode) == 0o600
    assert main(["token", "new", str(run)]) == 2  # never over an existing secret without --force
    assert "already exists" in capsys.readouterr().err
