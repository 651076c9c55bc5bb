"""The primitives of secure aggregation, all from ``cryptography`` (plus Python ints for Shamir).

* X25519 key agreement, HKDF-SHA256 key derivation (the shared secret is never used directly);
* AES-256-GCM for the peer-to-peer share ciphertexts relayed by the coordinator;
* the mask PRG: AES-256-CTR keyed with a full 256-bit seed, its keystream read as uint32 words;
* Shamir t-of-n secret sharing over the prime field GF(2^521 - 1), large enough for a 256-bit
  secret in one share. Fewer than t shares carry no information about the secret.
"""

from __future__ import annotations

import hashlib
import secrets
from functools import lru_cache

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

KEY_SIZE = 32  # X25519 keys, seeds and derived symmetric keys
PRIME = 2**521 - 1  # a Mersenne prime: GF(p) holds any 256-bit secret
SHARE_SIZE = 66  # bytes of one field element (521 bits)
GCM_TAG = 16
_ZERO_NONCE = bytes(12)  # every GCM key is derived for one (round, sender, recipient) only


class ShareError(ValueError):
    """A share or ciphertext is malformed, or does not decrypt under the expected key."""


def new_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_from_bytes(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def agree(private: X25519PrivateKey, peer_public: bytes, info: bytes) -> bytes:
    """A 256-bit key both ends derive alike: HKDF-SHA256 over the X25519 secret, bound to ``info``."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # wrong length or a low-order point
        raise ShareError(f"unusable public key: {exc}") from None
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(shared)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return AESGCM(key).encrypt(_ZERO_NONCE, plaintext, aad)


def open_sealed(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(_ZERO_NONCE, ciphertext, aad)
    except InvalidTag:
        raise ShareError("ciphertext failed authentication") from None


def mask_words(seed: bytes, count: int) -> np.ndarray:
    """``count`` uint32 words of AES-256-CTR keystream under the 256-bit ``seed``: uniform on
    Z_2^32 to anyone without the seed."""
    if len(seed) != KEY_SIZE:
        raise ValueError(f"a mask seed has {KEY_SIZE} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(4 * count)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32, copy=False)


def commitment(seed: bytes) -> bytes:
    """SHA-256 of a 256-bit random seed: lets the server check a reconstruction, reveals nothing."""
    return hashlib.sha256(b"ringfl secagg seed" + seed).digest()


def random_seed() -> bytes:
    return secrets.token_bytes(KEY_SIZE)


# --- Shamir over GF(2^521 - 1) ------------------------------------------------------------------


def split(secret: bytes, points: list[int], threshold: int) -> dict[int, bytes]:
    """Shares of ``secret`` at the x-coordinates ``points`` (distinct, >= 1); any ``threshold``
    of them recover it, fewer reveal nothing."""
    if not 1 <= threshold <= len(points):
        raise ValueError(f"threshold {threshold} must be in [1, {len(points)}]")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in points:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_SIZE, "big")
    return shares


def combine(shares: dict[int, bytes], size: int = KEY_SIZE) -> bytes:
    """Lagrange interpolation at 0. With fewer than the threshold's shares the result is a
    uniformly random field element, not the secret (and usually not even ``size`` bytes long,
    which raises ShareError)."""
    xs = tuple(sorted(shares))
    ys = [int.from_bytes(shares[x], "big") for x in xs]
    if any(y >= PRIME for y in ys) or any(len(shares[x]) != SHARE_SIZE for x in xs):
        raise ShareError("a share is not an element of the field")
    secret = sum(y * c for y, c in zip(ys, _lagrange_at_zero(xs))) % PRIME
    if secret >= 1 << (8 * size):
        raise ShareError("the shares do not interpolate to a secret of the expected size")
    return secret.to_bytes(size, "big")


@lru_cache(maxsize=1024)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """The interpolation weights at 0 for these x-coordinates (shared by every secret the same
    holders reveal in a round, so computed once)."""
    out = []
    for i, xi in enumerate(xs):
        num = den = 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(out)
