"""Membership-inference audit (loss threshold, offline LiRA) and the privacy / audit commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from ringfl.audit import AuditConfig, audit_params, cross_entropy, logit_confidence, roc_metrics
from ringfl.cli import main
from ringfl.config import TrainingConfig
from ringfl.data.partition import peer_indices
from ringfl.data.preprocess import prepare
from ringfl.data.sources import load_source
from ringfl.model import load_spec
from ringfl.model.runtime import shared_model
from tests.helpers import demo_config, run_coordinator


def test_roc_metrics_on_known_score_distributions():
    rng = np.random.default_rng(0)
    perfect = roc_metrics(np.arange(100, 200), np.arange(100), "x")
    assert perfect == {"x_auc": 1.0, "x_tpr_0_1pct": 1.0, "x_tpr_1pct": 1.0}
    same = roc_metrics(rng.normal(size=20_000), rng.normal(size=20_000), "x")
    assert same["x_auc"] == pytest.approx(0.5, abs=0.01)
    assert same["x_tpr_1pct"] == pytest.approx(0.01, abs=0.004)
    # members shifted by 1 sd: AUC = Φ(1/√2) = 0.760; TPR at 1 % FPR = 1 − Φ(2.326 − 1) = 0.0924
    shifted = roc_metrics(rng.normal(1.0, size=20_000), rng.normal(size=20_000), "x")
    assert shifted["x_auc"] == pytest.approx(0.760, abs=0.01)
    assert shifted["x_tpr_1pct"] == pytest.approx(0.0924, abs=0.01)


def test_logit_confidence_and_loss_match_the_softmax():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 30.0, 0.0]])
    y = np.array([0, 2])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    py = p[np.arange(2), y]
    np.testing.assert_allclose(logit_confidence(logits, y), np.log(py) - np.log1p(-py), rtol=1e-9)
    np.testing.assert_allclose(cross_entropy(logits, y), -np.log(py), rtol=1e-9)


def test_lira_finds_an_overfit_peer_and_not_an_untrained_model():
    """digits: peer 0 of 4 (360 records) trained 60 epochs; 4 shadows, 179 members (measured 0.60 vs 0.49)."""
    model = shared_model(load_spec("digits-mlp"))
    data = load_source("digits")
    rows = peer_indices(data.train.y, "iid", 4, 0, 0)
    trained = model.train_sync(model.init_params(0), prepare(data.train.x[rows], (64,)), data.train.y[rows],
                               lr=0.1, batch_size=16, epochs=60).params
    config = AuditConfig(peers=4, training=TrainingConfig(lr=0.1, batch_size=16), rounds=60, shadows=4,
                         members=1000)
    leaky = audit_params(trained, config)
    blind = audit_params(model.init_params(5), config)
    assert leaky["members"] == 179 and leaky["shadows"] == 4
    assert leaky["lira_auc"] > 0.57 > blind["lira_auc"]
    assert leaky["lira_tpr_1pct"] >= blind["lira_tpr_1pct"]


def test_privacy_plan_prints_sigma_for_the_target(capsys):
    assert main(["privacy", "plan", "--epsilon", "3", "--delta", "1e-5", "--rounds", "10"]) == 0
    out = capsys.readouterr().out
    assert "sigma = 1.2898" in out and "epsilon = 3.0000" in out and "230 in 10 rounds" in out
    assert main(["privacy", "plan", "--rounds", "10"]) == 2
    assert "needs --epsilon" in capsys.readouterr().err


async def test_audit_command_reads_a_coordinator_checkpoint(tmp_path, capsys):
    config = demo_config(rounds=2, peers=2)
    await run_coordinator(config, out_dir=tmp_path)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"peers": 2, "rounds": 2}))
    report_path = tmp_path / "audit.json"
    assert main(["audit", "--config", str(tmp_path / "run.yaml"), "--checkpoint", str(tmp_path / "checkpoint.npz"),
                 "--shadows", "2", "--members", "60", "--out", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["members"] == 60 and report["shadows"] == 2
    assert 0.0 <= report["lira_auc"] <= 1.0 and 0.0 <= report["loss_tpr_1pct"] <= 1.0
    assert json.loads(capsys.readouterr().out) == report
    assert main(["audit", "--config", str(tmp_path / "run.yaml"), "--checkpoint",
                 str(tmp_path / "missing.npz")]) == 2
