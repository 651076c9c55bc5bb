"""Membership-inference audit of a trained model: how much does it leak about one peer's records?

A DP guarantee is an upper bound; an audit measures what a concrete attacker gets, so a run can
show accuracy, ε and measured leakage side by side. Two attacks, both black-box on the final model:

* **loss threshold** (Yeom et al. 2018): members have lower loss; score = −loss.
* **offline LiRA** (Carlini et al. 2022, "Membership Inference Attacks From First Principles"):
  K shadow models of the same architecture are trained the way a peer trains (same
  hyperparameters, DP-SGD included) on random peer-sized subsets of a population that contains
  *none* of the audited records, so every shadow is an OUT model. For each audited record the
  logit-scaled confidence φ = log p_y − log(1 − p_y) on the shadows gives a Gaussian N(μ, σ²) of
  what the model would say without it; the score is (φ_target − μ)/σ (one-sided likelihood ratio).

Members are a random sample of peer ``index``'s training records (its partition under the run's
partition settings), non-members a random sample of the test split. Reported: ROC AUC and the TPR
at 0.1 % and 1 % FPR — the low-FPR numbers are what a confident attacker achieves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from ringfl.config import PartitionConfig, RunConfig, TrainingConfig
from ringfl.data.partition import kind_params, peer_indices
from ringfl.data.preprocess import prepare
from ringfl.data.sources import load_source
from ringfl.errors import ConfigError
from ringfl.model import load_spec
from ringfl.model.runtime import Model, shared_model
from ringfl.privacy.dp_sgd import plan

FPRS = (0.001, 0.01)


@dataclass(frozen=True)
class AuditConfig:
    """What was trained (to find the members and to train shadows like it) and the audit's size."""

    data: str = "digits"
    model: str = "digits-mlp"
    peers: int = 1
    index: int = 0  # whose records are the members
    seed: int = 0  # the run's seed (it fixes the partition)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    rounds: int = 1  # shadows train rounds × training.epochs local epochs
    shadows: int = 16
    members: int = 1000  # audited members (and as many non-members), at most what exists

    @classmethod
    def from_run(cls, config: RunConfig, **changes: Any) -> AuditConfig:
        return cls(data=config.data, model=config.model, peers=config.peers, seed=config.seed,
                   partition=config.partition, training=config.training, rounds=config.rounds, **changes)


def roc_metrics(members: np.ndarray, non_members: np.ndarray, prefix: str) -> dict[str, float]:
    """AUC (Mann–Whitney, ties count half) and TPR at each FPR in :data:`FPRS`; higher score = member."""
    members, non_members = np.asarray(members, np.float64), np.asarray(non_members, np.float64)
    ranks = stats.rankdata(np.concatenate([members, non_members]))
    m, n = members.size, non_members.size
    auc = (ranks[:m].sum() - m * (m + 1) / 2) / (m * n)
    out = {f"{prefix}_auc": float(auc)}
    ordered = np.sort(non_members)[::-1]
    for fpr in FPRS:
        allowed = int(np.floor(fpr * n))  # non-members allowed strictly above the threshold
        threshold = ordered[allowed] if allowed < n else -np.inf
        out[f"{prefix}_tpr_{_pct(fpr)}"] = float(np.mean(members > threshold))
    return out


def _pct(fpr: float) -> str:
    return f"{fpr * 100:g}pct".replace(".", "_")


def logit_confidence(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """φ = log p_y − log(1 − p_y), computed stably from class scores (LiRA's statistic)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    rows = np.arange(len(y))
    true = z[rows, y]
    others = z.copy()
    others[rows, y] = -np.inf
    return true - np.logaddexp.reduce(others, axis=1)


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    return np.logaddexp.reduce(z, axis=1) - z[np.arange(len(y)), y]


def _train_like_a_peer(model: Model, config: AuditConfig, x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    t = config.training
    params = model.init_params(seed)
    if t.privacy.enabled:
        p = plan(t.privacy, num_samples=len(y), batch_size=t.batch_size, rounds=config.rounds, epochs=t.epochs)
        return model.train_dp_sync(params, x, y, lr=t.lr, batch_size=t.batch_size, clip=t.privacy.clip,
                                   noise_multiplier=p.noise_multiplier, steps=p.total_steps, seed=seed).params
    return model.train_sync(params, x, y, lr=t.lr, batch_size=t.batch_size, epochs=config.rounds * t.epochs,
                            momentum=t.momentum, weight_decay=t.weight_decay, seed=seed).params


def audit_params(params: np.ndarray, config: AuditConfig, progress: Any = None) -> dict[str, Any]:
    """Loss-threshold and offline-LiRA membership inference against ``params``; see the module doc.

    ``progress``: optional callable(done, total) after each shadow model.
    """
    if config.shadows < 2:
        raise ConfigError("audit: LiRA needs at least 2 shadow models")
    spec = load_spec(config.model)
    model = shared_model(spec)
    if np.asarray(params).shape != (model.num_params,):
        raise ConfigError(f"audit: the parameters have shape {np.shape(params)}, {spec.name} needs ({model.num_params},)")
    splits = load_source(config.data, num_classes=spec.num_classes)
    train, test = splits.train, splits.test
    extra = {p: getattr(config.partition, p) for p in kind_params(config.partition.kind)}
    rows = peer_indices(train.y, config.partition.kind, config.peers, config.seed, config.index, **extra)
    rng = np.random.default_rng([config.seed, config.index, 13])
    count = min(config.members, len(rows), len(test.y) // 2)
    members = rng.choice(rows, size=count, replace=False)
    outsiders = rng.choice(len(test.y), size=count, replace=False)
    audit_x = prepare(np.concatenate([train.x[members], test.x[outsiders]]), spec.input_shape)
    audit_y = np.concatenate([train.y[members], test.y[outsiders]]).astype(np.int64)

    # the shadows' population: every record except the audited ones
    pool_x = np.concatenate([np.delete(train.x, members, axis=0), np.delete(test.x, outsiders, axis=0)])
    pool_y = np.concatenate([np.delete(train.y, members), np.delete(test.y, outsiders)])
    size = min(len(rows), len(pool_y) // 2)
    phis = []
    for k in range(config.shadows):
        subset = rng.choice(len(pool_y), size=size, replace=False)
        shadow = _train_like_a_peer(model, config, prepare(pool_x[subset], spec.input_shape), pool_y[subset],
                                    seed=config.seed * 1000 + 7919 + k)
        phis.append(logit_confidence(model.logits_sync(shadow, audit_x), audit_y))
        if progress is not None:
            progress(k + 1, config.shadows)
    out_phi = np.stack(phis)
    target_logits = model.logits_sync(np.asarray(params, np.float32), audit_x)
    target_phi = logit_confidence(target_logits, audit_y)
    loss = cross_entropy(target_logits, audit_y)
    mu = out_phi.mean(axis=0)
    sd = np.maximum(out_phi.std(axis=0, ddof=1), 1e-6)
    lira = (target_phi - mu) / sd
    report: dict[str, Any] = {"members": count, "non_members": count, "shadows": config.shadows,
                              "shadow_size": size, "peer_index": config.index}
    report.update(roc_metrics(-loss[:count], -loss[count:], "loss"))
    report.update(roc_metrics(lira[:count], lira[count:], "lira"))
    return report
