"""Ring mode stops and resumes: peers checkpoint every round (``ringfl/ring/state.py``), the
bootstrap continues its records, and a run stopped after round k and resumed goes on as if it
had never stopped; checkpoints of another run, or of no usable round, are refused in one line."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import trio

from ringfl.cli import main
from ringfl.config import TrainingConfig
from ringfl.errors import ConfigError
from ringfl.metrics import MetricsLog, read_jsonl
from ringfl.model import load_spec
from ringfl.peer import PeerOptions
from ringfl.ring import Bootstrap, RingPeer
from ringfl.ring.state import PeerState, RunIdentity
from ringfl.topology import generate, load_topology
from ringfl.transport import MemoryNetwork
from tests.helpers import demo_config

ROUNDS = 5
SETTINGS = {"theta_u": 0.1, "choco_gamma": 0.5}


class StartRecordingPeer(RingPeer):
    """A ring peer that remembers the parameters its first training slice started from."""

    first_start: np.ndarray | None = None

    async def _train_slice(self, params, round_, start, steps, sliced):
        if self.first_start is None:
            self.first_start = params.copy()
        return await super()._train_slice(params, round_, start, steps, sliced)


def _config(algorithm: str, rounds: int = ROUNDS):
    return demo_config(algorithm=algorithm, rounds=rounds, algorithm_settings=SETTINGS, order="sync",
                       training=TrainingConfig(lr=0.2, batch_size=16))


async def run_ring(folder: Path, algorithm: str, *, resume: bool = False, stop_after: int | None = None,
                   topology=None, rounds: int = ROUNDS) -> tuple[Bootstrap, list[StartRecordingPeer]]:
    """A bootstrap and its ring peers in memory, each with an output folder under ``folder``;
    ``stop_after=k`` cancels everything once the bootstrap recorded k rounds (a Ctrl-C)."""
    topology = topology or generate("ring", 4)
    config = _config(algorithm, rounds)
    network = MemoryNetwork()
    bootstrap = Bootstrap(config, network, folder / "bootstrap", resume=resume, topology=topology)
    peers = []
    async with trio.open_nursery() as nursery:
        address = await nursery.start(bootstrap.run)
        for i, label in enumerate(topology.labels):
            peer = StartRecordingPeer(network, PeerOptions(coordinator=address, name=label, peers=topology.n, index=i,
                                                           run_id=config.run_id, eval_samples=200),
                                      state_dir=folder / label, resume=resume)
            peer.metrics = MetricsLog(folder / label, append=resume)
            peers.append(peer)
            nursery.start_soon(peer.run)
        if stop_after is not None:
            with trio.fail_after(60):
                while len(bootstrap.history) < stop_after:
                    await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
    return bootstrap, peers


def _rounds(path: Path) -> list[int]:
    return [row["round"] for row in read_jsonl(path / "metrics.jsonl")]


@pytest.mark.parametrize("algorithm", ["d-psgd", "gradient-tracking", "choco", "gossip-dssgd"])
async def test_a_stopped_ring_resumed_ends_where_an_uninterrupted_run_ends(tmp_path, algorithm):
    """Synchronous and seeded: stopping after round k and resuming repeats rounds k+1..R exactly
    (to float rounding: neighbours' updates are summed in arrival order)."""
    _, whole = await run_ring(tmp_path / "whole", algorithm)
    stopped, _ = await run_ring(tmp_path / "split", algorithm, stop_after=2)
    k = len(stopped.history)
    assert 2 <= k < ROUNDS
    labels = [p.name for p in whole]
    saved = {label: PeerState(tmp_path / "split" / label, whole[0].state.identity).rounds() for label in labels}
    assert all(k in rounds for rounds in saved.values()), (k, saved)  # every peer saved the recorded round

    resumed, peers = await run_ring(tmp_path / "split", algorithm, resume=True)
    assert [r["round"] for r in resumed.history] == list(range(1, ROUNDS + 1))
    assert _rounds(tmp_path / "split" / "bootstrap") == list(range(1, ROUNDS + 1))  # no round twice
    totals = [r["bytes"] for r in resumed.history]
    assert totals == sorted(totals) and totals[k] > totals[k - 1]  # byte totals go on from the checkpoint
    for peer in peers:
        assert [m["round"] for m in peer.history] == list(range(k + 1, ROUNDS + 1))
        assert _rounds(tmp_path / "split" / peer.name) == list(range(1, ROUNDS + 1))
    for peer, reference in zip(peers, whole):
        np.testing.assert_allclose(peer.params, reference.params, atol=1e-5, err_msg=f"peer {peer.name}")


async def test_resumed_peers_start_from_exactly_the_checkpointed_parameters(tmp_path):
    stopped, _ = await run_ring(tmp_path, "d-psgd", stop_after=2)
    k = len(stopped.history)
    saved = {}
    for label in generate("ring", 4).labels:
        identity = RunIdentity("test", load_spec("digits-mlp").hash, 0, "d-psgd", label)
        saved[label] = PeerState(tmp_path / label, identity).load(k).params
    _, peers = await run_ring(tmp_path, "d-psgd", resume=True)
    for peer in peers:
        np.testing.assert_array_equal(peer.first_start, saved[peer.name])
        assert peer.history[0]["round"] == k + 1


async def test_standalone_ring_peers_resume_from_their_own_checkpoints(tmp_path):
    """No bootstrap: each peer continues from its newest checkpoint; a run of 2 rounds resumed
    with 4 ends where a 4-round run does."""
    topology = load_topology("topologies/ring-standalone.yaml")

    async def run(folder: Path, rounds: int, resume: bool) -> list[RingPeer]:
        config = demo_config(algorithm="d-psgd", rounds=rounds, round_timeout=10.0, algorithm_settings=SETTINGS)
        network = MemoryNetwork()
        peers = [RingPeer(network, PeerOptions(coordinator="", name=label, run_id="test", eval_samples=200),
                          without_bootstrap=(topology, config), state_dir=folder / label, resume=resume)
                 for label in topology.labels]
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(peer.run)
        return peers

    whole = await run(tmp_path / "whole", 4, False)
    await run(tmp_path / "split", 2, False)
    resumed = await run(tmp_path / "split", 4, True)
    for peer, reference in zip(resumed, whole):
        assert [m["round"] for m in peer.history] == [3, 4]
        np.testing.assert_allclose(peer.params, reference.params, atol=1e-5)


# --- which round a peer continues from -----------------------------------------------------------


def _state(folder: Path, rounds: list[int], **identity) -> PeerState:
    state = PeerState(folder, RunIdentity(**{"run_id": "r", "spec_hash": "a" * 64, "seed": 0,
                                              "algorithm": "d-psgd", "node": "0", **identity}))
    for round_ in rounds:
        state.save(round_, np.full(3, round_, np.float32), {}, None, keep=10)
    return state


def test_a_synchronous_resume_takes_the_bootstraps_round_exactly(tmp_path):
    state = _state(tmp_path, [3, 4, 5])
    assert state.choose(4, bootstrap=True, asynchronous=False) == (4, 4)
    assert state.load(4).params.tolist() == [4, 4, 4]


def test_a_peer_that_was_behind_continues_from_its_newest_older_state(tmp_path, caplog):
    state = _state(tmp_path, [1, 2])
    with caplog.at_level(logging.WARNING):
        assert state.choose(4, bootstrap=True, asynchronous=False) == (2, 4)
    assert "no checkpoint of round 4" in caplog.text


def test_a_peer_that_kept_only_later_rounds_is_refused(tmp_path):
    state = _state(tmp_path, [6, 7])
    with pytest.raises(ConfigError, match=r"cannot resume at round 4: .* holds rounds 6-7 only"):
        state.choose(4, bootstrap=True, asynchronous=False)


def test_a_resumed_peer_refuses_a_bootstrap_that_starts_afresh(tmp_path):
    with pytest.raises(ConfigError, match="the bootstrap starts the run from round 0"):
        _state(tmp_path, [3]).choose(0, bootstrap=True, asynchronous=False)


def test_asynchronous_and_standalone_peers_take_their_newest_state(tmp_path):
    state = _state(tmp_path, [2, 5])
    assert state.choose(3, bootstrap=True, asynchronous=True) == (5, 5)
    assert state.choose(0, bootstrap=False, asynchronous=False) == (5, 5)
    assert _state(tmp_path / "b", [2]).choose(4, bootstrap=True, asynchronous=True) == (2, 4)


def test_only_the_newest_rounds_are_kept_and_a_new_run_clears_them(tmp_path):
    state = _state(tmp_path, [1, 2, 3, 4])
    state.save(5, np.zeros(3, np.float32), {}, None, keep=2)
    assert state.rounds() == [4, 5]
    assert not list(state.folder.glob(".*.tmp"))  # written through a temporary file and renamed
    state.clear()
    assert state.rounds() == []


def test_a_checkpoint_of_another_run_is_refused_naming_both_values(tmp_path):
    _state(tmp_path, [2], seed=7, run_id="other")
    ours = PeerState(tmp_path, RunIdentity("r", "a" * 64, 0, "d-psgd", "0"))
    with pytest.raises(ConfigError) as error:
        ours.check()
    message = str(error.value)
    assert "\n" not in message and "is of another run" in message
    assert "run_id 'other', this run 'r'" in message and "seed 7, this run 0" in message


# --- refusals on the command line ------------------------------------------------------------------


def _standalone(tmp_path: Path, *extra: str) -> list[str]:
    (tmp_path / "run.yaml").write_text("algorithm: d-psgd\nrounds: 2\nseed: 1\n")
    return ["peer", "--topology", "topologies/ring-standalone.yaml", "--id", "alice",
            "--config", str(tmp_path / "run.yaml"), "--quiet", *extra]


def test_a_peer_resuming_another_runs_state_fails_in_one_line(tmp_path, capsys):
    identity = {"run_id": "ringfl", "spec_hash": load_spec("digits-mlp").hash, "node": "alice"}
    _state(tmp_path / "alice", [2], seed=0, **identity)
    assert main(_standalone(tmp_path, "--out", str(tmp_path / "alice"), "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume" in err[0] and "seed 0, this run 1" in err[0], err


@pytest.mark.parametrize("extra, message", [
    (["--resume"], "--resume needs --out DIR"),
    (["--out", "{tmp}/empty", "--resume"], "cannot resume: no checkpoint in"),
])
def test_a_peer_without_state_to_resume_fails_in_one_line(tmp_path, capsys, extra, message):
    argv = _standalone(tmp_path, *[e.format(tmp=tmp_path) for e in extra])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_resume_is_refused_for_a_coordinator_mode_peer(capsys):
    assert main(["peer", "--coordinator", "127.0.0.1:1", "--out", "x", "--resume"]) == 2
    assert "--resume is for ring peers" in capsys.readouterr().err


async def test_a_bootstrap_refuses_to_resume_another_run_or_nothing(tmp_path):
    ring = generate("ring", 3)
    await run_ring(tmp_path, "d-psgd", topology=ring, rounds=1)
    with pytest.raises(ConfigError) as error:
        Bootstrap(_config("choco"), MemoryNetwork(), tmp_path / "bootstrap", resume=True, topology=ring)
    assert "is of another run (algorithm 'd-psgd', this run 'choco')" in str(error.value)
    with pytest.raises(ConfigError, match="nodes 3, this run 4"):
        Bootstrap(_config("d-psgd"), MemoryNetwork(), tmp_path / "bootstrap", resume=True, topology=generate("ring", 4))
    with pytest.raises(ConfigError, match="cannot resume: no checkpoint at"):
        Bootstrap(_config("d-psgd"), MemoryNetwork(), tmp_path / "nothing", resume=True, topology=ring)


async def test_peers_that_lose_their_bootstrap_stop_unsaved_and_the_run_resumes(tmp_path):
    """Only the bootstrap is stopped: the peers notice, keep the round it cut short out of their
    checkpoints, and the resumed run still ends where an uninterrupted one does."""
    _, whole = await run_ring(tmp_path / "whole", "d-psgd")
    topology = generate("ring", 4)
    config = _config("d-psgd")
    network = MemoryNetwork()
    bootstrap = Bootstrap(config, network, tmp_path / "split" / "bootstrap", topology=topology)
    peers = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def serve(task_status=trio.TASK_STATUS_IGNORED):
                with scope:
                    await bootstrap.run(task_status=task_status)

            address = await nursery.start(serve)
            for i, label in enumerate(topology.labels):
                peer = RingPeer(network, PeerOptions(coordinator=address, name=label, peers=4, index=i,
                                                     run_id=config.run_id, eval_samples=200),
                                state_dir=tmp_path / "split" / label)
                peers.append(peer)
                nursery.start_soon(peer.run)
            while len(bootstrap.history) < 2:
                await trio.sleep(0.005)
            scope.cancel()
    assert all(p.lost_bootstrap for p in peers)
    assert all(p.progress()[0] < ROUNDS for p in peers)
    for peer, reference in zip(peers, whole):  # every saved round is a whole one: as the uninterrupted run's
        assert peer.state is not None and reference.state is not None
        common = set(peer.state.rounds()) & set(reference.state.rounds())
        assert common, (peer.state.rounds(), reference.state.rounds())
        for round_ in common:
            np.testing.assert_allclose(peer.state.load(round_).params, reference.state.load(round_).params, atol=1e-5)
    _, resumed = await run_ring(tmp_path / "split", "d-psgd", resume=True)
    for peer, reference in zip(resumed, whole):
        np.testing.assert_allclose(peer.params, reference.params, atol=1e-5, err_msg=f"peer {peer.name}")
