"""A ring peer's durable state, so a stopped ring run continues instead of starting over.

After every finished round a peer with a state folder writes ``DIR/state/round-NNNNNN.npz``
atomically (:mod:`ringfl.checkpoint`: temporary file, fsync, rename): its mixed parameters, the
gossip algorithm's arrays (:meth:`GossipAlgorithm.state`: CHOCO's public copies, gradient
tracking's tracker), the selection generator's state (plain runs only: a private run's noise
generator is never written down) and the run it belongs to (run id, spec hash, seed, algorithm,
node). The privacy ledger is kept apart (``--ledger``, by default ``DIR/ledger.json``) and is
never rolled back: ε spent on an update that left is spent.

Why one file per round and not only the latest: the peers of a synchronous ring stop at slightly
different rounds (at most the graph's diameter apart), and a resumed run continues every one of
them from the round the bootstrap recorded last, so a peer keeps its last ``n`` rounds (n nodes,
more than any diameter). Which round a peer continues from is :meth:`PeerState.choose`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ringfl.checkpoint import load_checkpoint, save_checkpoint
from ringfl.errors import ConfigError

log = logging.getLogger(__name__)

STATE_FOLDER = "state"
_FILE = re.compile(r"^round-(\d{6})\.npz$")
_PARAMS = "params"
_ALGORITHM = "alg_"  # prefix of the gossip algorithm's arrays


@dataclass(frozen=True)
class RunIdentity:
    """What a checkpoint must share with the run that resumes it."""

    run_id: str
    spec_hash: str
    seed: int
    algorithm: str
    node: str

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """``field saved, this run ours`` for every field that differs (empty: the same run)."""
        return identity_differences(asdict(self), saved)


def identity_differences(ours: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """``key saved, this run ours`` for every key of ``ours`` that ``saved`` gives differently
    (spec hashes shortened to 16 characters): what a refused resume names."""
    out = []
    for key, value in ours.items():
        theirs = saved.get(key)
        if theirs != value:
            shown = (str(theirs)[:16], str(value)[:16]) if key == "spec_hash" else (repr(theirs), repr(value))
            out.append(f"{key} {shown[0]}, this run {shown[1]}")
    return out


@dataclass
class SavedRound:
    """One round's state as :meth:`PeerState.load` reads it back."""

    round: int
    params: np.ndarray
    algorithm: dict[str, np.ndarray]
    rng: dict[str, Any] | None
    bytes_by_neighbour: dict[str, list[int]]


class PeerState:
    """The per-round checkpoints of one ring peer in ``folder/state``."""

    def __init__(self, folder: Path, identity: RunIdentity) -> None:
        self.folder = Path(folder) / STATE_FOLDER
        self.identity = identity

    def path(self, round_: int) -> Path:
        return self.folder / f"round-{round_:06d}.npz"

    def rounds(self) -> list[int]:
        """Rounds with a checkpoint, ascending."""
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _FILE.match(p.name)))

    def save(self, round_: int, params: np.ndarray, algorithm: dict[str, np.ndarray],
             rng: dict[str, Any] | None, keep: int, bytes_by_neighbour: dict[str, list[int]] | None = None) -> None:
        """Round ``round_`` (1-based, finished) atomically; then only the newest ``keep`` stay.
        ``bytes_by_neighbour``: the link counters, so the run's byte totals go on from them.
        Blocking (fsync): call it off the event loop."""
        arrays = {_PARAMS: np.asarray(params, dtype=np.float32)}
        arrays.update({_ALGORITHM + key: np.asarray(value) for key, value in algorithm.items()})
        meta = {**asdict(self.identity), "round": round_, "rng": json.dumps(rng) if rng is not None else None,
                "bytes_by_neighbour": bytes_by_neighbour or {}}
        save_checkpoint(self.path(round_), arrays, meta)
        for old in self.rounds()[:-max(keep, 1)]:
            self.path(old).unlink(missing_ok=True)

    def clear(self, after: int = -1) -> None:
        """Forget the checkpoints of rounds after ``after`` (all by default): a new run, or a resume
        that continues from an earlier round and will write those rounds again."""
        for round_ in self.rounds():
            if round_ > after:
                self.path(round_).unlink(missing_ok=True)

    def check(self) -> int:
        """The newest checkpointed round, after making sure it belongs to this run (one-line
        ConfigError otherwise, naming both values of what differs)."""
        rounds = self.rounds()
        if not rounds:
            raise ConfigError(f"cannot resume: no checkpoint in {self.folder}")
        _, meta = load_checkpoint(self.path(rounds[-1]))
        differences = self.identity.differences(meta)
        if differences:
            raise ConfigError(f"cannot resume: {self.path(rounds[-1])} is of another run ({'; '.join(differences)})")
        return rounds[-1]

    def choose(self, start: int, *, bootstrap: bool, asynchronous: bool) -> tuple[int, int]:
        """(checkpointed round to load, first round to train, 0-based) for a run that the
        bootstrap continues after ``start`` finished rounds.

        Synchronous with a bootstrap: exactly round ``start`` (every peer continues from the same
        round, so the run goes on as if never stopped); a peer whose newest checkpoint is older
        (it was down) continues from that one at round ``start + 1``, as a peer returning after
        a crash would; one that only kept rounds after ``start`` cannot take part (one line).
        Asynchronous, or without a bootstrap: the newest checkpoint, from its next round on
        (nobody waits for a common round)."""
        rounds = self.rounds()
        newest = self.check()
        if bootstrap and start == 0:
            raise ConfigError(f"cannot resume: the bootstrap starts the run from round 0 (give it --out DIR "
                              f"--resume too); this peer's checkpoints reach round {newest}")
        if not bootstrap or asynchronous:
            return newest, max(newest, start)
        if start in rounds:
            return start, start
        older = [r for r in rounds if r < start]
        if not older:
            raise ConfigError(f"cannot resume at round {start}: {self.folder} holds rounds "
                              f"{rounds[0]}-{rounds[-1]} only (this peer ran further ahead than it keeps)")
        log.warning("peer %s has no checkpoint of round %d; it continues from round %d's state",
                    self.identity.node, start, older[-1])
        return older[-1], start

    def load(self, round_: int) -> SavedRound:
        arrays, meta = load_checkpoint(self.path(round_))
        rng = meta.get("rng")
        return SavedRound(round=int(meta["round"]), params=arrays.pop(_PARAMS),
                          algorithm={k[len(_ALGORITHM):]: v for k, v in arrays.items() if k.startswith(_ALGORITHM)},
                          rng=json.loads(rng) if rng else None,
                          bytes_by_neighbour={str(k): [int(v[0]), int(v[1])]
                                              for k, v in meta.get("bytes_by_neighbour", {}).items()})
