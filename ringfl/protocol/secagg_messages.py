"""Secure-aggregation messages (1101-1107; :mod:`ringfl.secagg`, docs/protocol.md "Secure
aggregation"): registered with the codec when :mod:`ringfl.protocol` is imported."""

from __future__ import annotations

import numpy as np

from ringfl.protocol.messages import Bytes, Code, Ids, Message, Words, message_type

SECAGG_KEY_SIZE = 32  # X25519 public keys, seed commitments
SECAGG_SHARE_SIZE = 66  # one Shamir share: an element of GF(2^521 - 1), big-endian
SECAGG_SEALED_SIZE = 2 * SECAGG_SHARE_SIZE + 16  # AES-GCM(share of b || share of s) + tag


def _check_blob(name: str, blob: np.ndarray, items: int, item_size: int) -> None:
    if blob.size != items * item_size:
        raise ValueError(f"{name} must hold {items} x {item_size} bytes, got {blob.size}")


def _check_ids(name: str, ids: tuple[str, ...]) -> None:
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name} lists a peer twice")


@message_type(Code.SECAGG_KEYS)
class SecAggKeys(Message):
    """C: this round's public keys (share encryption, pairwise masks) and SHA-256 of the self-mask seed."""

    c_pk: Bytes
    s_pk: Bytes
    b_commit: Bytes

    def check(self) -> None:
        for name in ("c_pk", "s_pk", "b_commit"):
            _check_blob(name, getattr(self, name), 1, SECAGG_KEY_SIZE)


@message_type(Code.SECAGG_ROSTER)
class SecAggRoster(Message):
    """S: the recipient's neighbourhood (itself included): ids, Shamir x-coordinates, both public
    keys of each (``keys``: c_pk || s_pk per peer) and the share threshold."""

    peers: Ids
    points: Words
    keys: Bytes
    threshold: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "peers", tuple(self.peers))

    def check(self) -> None:
        _check_ids("peers", self.peers)
        _check_blob("keys", self.keys, len(self.peers), 2 * SECAGG_KEY_SIZE)
        if self.points.size != len(self.peers) or (self.points == 0).any():
            raise ValueError("points must give each peer a non-zero x-coordinate")
        if not 1 <= self.threshold <= len(self.peers):
            raise ValueError(f"threshold must be in [1, {len(self.peers)}], got {self.threshold}")


@message_type(Code.SECAGG_SHARES)
class SecAggShares(Message):
    """C: one sealed pair of shares per neighbour, for the server to relay."""

    recipients: Ids
    sealed: Bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "recipients", tuple(self.recipients))

    def check(self) -> None:
        _check_ids("recipients", self.recipients)
        _check_blob("sealed", self.sealed, len(self.recipients), SECAGG_SEALED_SIZE)


@message_type(Code.SECAGG_INBOX)
class SecAggInbox(Message):
    """S: the sealed shares addressed to the recipient, by sender; these senders' masks apply."""

    senders: Ids
    sealed: Bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "senders", tuple(self.senders))

    def check(self) -> None:
        _check_ids("senders", self.senders)
        _check_blob("sealed", self.sealed, len(self.senders), SECAGG_SEALED_SIZE)


@message_type(Code.SECAGG_MASKED)
class SecAggMasked(Message):
    """C: the quantised update plus self-mask and pairwise masks, in Z_2^32."""

    masked: Words
    num_samples: int = 0


@message_type(Code.SECAGG_UNMASK_REQUEST)
class SecAggUnmaskRequest(Message):
    """S: whose masked input arrived (reveal the self-mask share) and who dropped after sharing
    (reveal the mask-key share). A peer never reveals both for one sender."""

    survivors: Ids
    dropped: Ids

    def __post_init__(self) -> None:
        object.__setattr__(self, "survivors", tuple(self.survivors))
        object.__setattr__(self, "dropped", tuple(self.dropped))

    def check(self) -> None:
        _check_ids("survivors + dropped", self.survivors + self.dropped)


@message_type(Code.SECAGG_UNMASK)
class SecAggUnmask(Message):
    """C: the requested shares that decrypted, one ``SECAGG_SHARE_SIZE`` slot per listed peer."""

    peers: Ids
    shares: Bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "peers", tuple(self.peers))

    def check(self) -> None:
        _check_ids("peers", self.peers)
        _check_blob("shares", self.shares, len(self.peers), SECAGG_SHARE_SIZE)
