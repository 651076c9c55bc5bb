"""Distributed differential privacy under secure aggregation (DP-FedAvg without trusting the
coordinator with any single update).

Each peer clips its update to L2 norm C and adds its own share of the noise, N(0, σ²C²/t) per
coordinate, where t is the round's share threshold — the fewest masked inputs a round can close
with. The unmasked sum over m >= t peers therefore carries Gaussian noise of variance
m·σ²C²/t >= σ²C²: the Gaussian mechanism with noise multiplier σ on a sum of sensitivity C, as
private as central DP, while the coordinator never sees an individual (less noisy) update.
"""

from __future__ import annotations

import numpy as np


def clip_and_noise(update: np.ndarray, clip_norm: float | None, noise_multiplier: float,
                   threshold: int, rng: np.random.Generator) -> np.ndarray:
    """The peer's contribution: ``update`` clipped to ``clip_norm`` plus its noise share."""
    out = np.asarray(update, np.float64)
    if clip_norm is not None:
        norm = float(np.linalg.norm(out))
        if norm > clip_norm:
            out = out * (clip_norm / norm)
    if noise_multiplier > 0:
        assert clip_norm is not None, "noise needs a clip norm (checked by SecAggSettings)"
        out = out + rng.normal(0.0, noise_multiplier * clip_norm / np.sqrt(threshold), out.shape)
    return out


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε after ``rounds`` Gaussian releases of noise multiplier σ: the run's shared RDP accountant
    (ringfl.privacy.accountant) with every peer in every round (sampling probability 1)."""
    from ringfl.privacy.accountant import epsilon_of

    return epsilon_of([(noise_multiplier, 1.0, rounds)], delta)
