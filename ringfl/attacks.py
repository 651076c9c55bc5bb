"""Byzantine behaviour for robustness experiments: a peer that corrupts what it uploads.

Only experiments and tests use this (``PeerOptions.attack``); it exists so the robust
aggregators can be measured against the attacks they are meant to resist.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ringfl.errors import ConfigError
from ringfl.vectors import SparseVector, Vector

ATTACKS = ("sign-flip", "scale", "noise")


def parse_attack(text: str) -> tuple[str, float]:
    """``"sign-flip"``, ``"scale:10"`` or ``"noise:0.1"`` -> (kind, strength)."""
    kind, _, value = text.partition(":")
    if kind not in ATTACKS:
        raise ConfigError(f"unknown attack {text!r} (valid: sign-flip, scale:K, noise:SIGMA)")
    try:
        strength = float(value) if value else {"sign-flip": 1.0, "scale": 10.0, "noise": 1.0}[kind]
    except ValueError:
        raise ConfigError(f"attack {text!r}: {value!r} is not a number") from None
    return kind, strength


def corrupt(vector: Vector, attack: str, rng: np.random.Generator) -> Vector:
    """The update a Byzantine peer sends instead of ``vector``."""
    kind, strength = parse_attack(attack)
    values = vector.values if isinstance(vector, SparseVector) else np.asarray(vector, np.float32)
    if kind == "sign-flip":
        bad = -strength * values
    elif kind == "scale":
        bad = strength * values
    else:
        bad = values + rng.normal(0.0, strength, values.shape)
    bad = bad.astype(np.float32)
    if isinstance(vector, SparseVector):
        return dataclasses.replace(vector, values=bad)
    return bad
