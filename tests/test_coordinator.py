"""Coordinator mode in memory: the algorithms learn, the server decides, checkpoints resume."""

from __future__ import annotations

import numpy as np
import pytest
import trio
import trio.testing

from ringfl.acceptance import AcceptancePolicy, Reason
from ringfl.config import AcceptanceConfig
from ringfl.coordinator import Coordinator
from ringfl.metrics import read_jsonl
from ringfl.peer import Peer, PeerOptions
from ringfl.protocol import (
    Accept,
    Ack,
    AckReason,
    Connection,
    EndOfRun,
    JoinRequest,
    Limits,
    PeerReport,
    Reject,
    RejectReason,
    Role,
    RoundStart,
    SpecConfirm,
    SpecReply,
    Upload,
)
from ringfl.transport import MemoryNetwork, dial
from ringfl.vectors import SparseVector
from tests.helpers import demo_config, run_coordinator, serving


@pytest.mark.parametrize(
    ("algorithm", "settings", "margin"),
    [
        ("fedavg", {}, 0.4),
        ("fedsgd", {"server_lr": 1.0}, 0.2),
        ("dssgd", {"theta_u": 0.1, "gamma": 0.05}, 0.3),
    ],
)
async def test_algorithms_learn_round_over_round(algorithm, settings, margin):
    config = demo_config(algorithm=algorithm, algorithm_settings=settings, rounds=3)
    coordinator, peers = await run_coordinator(config)
    accuracy = [r["accuracy"] for r in coordinator.history]
    assert [r["round"] for r in coordinator.history] == [0, 1, 2, 3]
    assert accuracy[-1] > accuracy[0] + margin, accuracy
    assert accuracy[-1] >= accuracy[1] - 0.02  # no stale model: later rounds do not fall back
    assert coordinator.pool.stats.applied == 3 * len(peers) and coordinator.pool.stats.rejected == 0
    assert all(len(p.history) == 3 for p in peers)


async def test_metrics_and_summary_files(tmp_path):
    config = demo_config(rounds=2, peers=2)
    coordinator, _ = await run_coordinator(config, out_dir=tmp_path)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["round"] for r in records] == [0, 1, 2]
    for key in ("accuracy", "loss", "bytes_in", "bytes_out", "accepted", "rejected", "pool_peak"):
        assert key in records[-1]
    assert records[-1]["bytes_in"] > records[1]["bytes_in"] > 0
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "checkpoint.npz").is_file()


async def test_rounds_done_counts_what_a_resume_keeps(tmp_path):
    """A stop can land after a round closed but before its checkpoint (while it is evaluated):
    the interrupted summary must then say what --resume will restore, not one round more."""
    config = demo_config(rounds=3, peers=2, checkpoint_every=2)
    seen: list[tuple[int, int]] = []
    async with serving(config, out_dir=tmp_path) as (coordinator, network, address, nursery):
        coordinator.on_round.append(lambda row: seen.append((row["round"], coordinator.rounds_done())))
        for i in range(2):
            nursery.start_soon(Peer(network, PeerOptions(coordinator=address, name=f"p{i}", peers=2, index=i,
                                                         run_id=config.run_id)).run)
    assert seen == [(0, 0), (1, 0), (2, 0), (3, 2)]  # each row is recorded before its checkpoint
    assert coordinator.rounds_done() == 3
    assert Coordinator(config, MemoryNetwork(), tmp_path, resume=True).rounds_done() == 3


async def test_resume_continues_from_the_checkpoint(tmp_path):
    first, _ = await run_coordinator(demo_config(rounds=2, peers=2, algorithm="dssgd",
                                                 algorithm_settings={"theta_u": 0.1, "gamma": 0.05}),
                                     out_dir=tmp_path)
    saved = first.algorithm.state()
    resumed = Coordinator(demo_config(rounds=3, peers=2, algorithm="dssgd",
                                      algorithm_settings={"theta_u": 0.1, "gamma": 0.05}),
                          MemoryNetwork(), tmp_path, resume=True)
    assert resumed.round == 2
    for key, value in saved.items():
        assert np.array_equal(resumed.algorithm.state()[key], value), key
    coordinator, _ = await run_coordinator(resumed.config, out_dir=tmp_path, resume=True)
    assert coordinator.round == 3
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert resumed.bytes_total() == (rows[2]["bytes_in"], rows[2]["bytes_out"])  # totals carry over ...
    assert rows[3]["bytes_in"] > rows[2]["bytes_in"] and rows[3]["bytes_out"] > rows[2]["bytes_out"]  # ... and grow


async def test_dp_ledger_refuses_uploads_past_the_budget():
    settings = {"theta_u": 0.1, "gamma": 0.05, "epsilon": 1.0, "budget": 2.0}
    coordinator, peers = await run_coordinator(demo_config(algorithm="dssgd", rounds=4, peers=2,
                                                           round_timeout=2.0, algorithm_settings=settings))
    for peer in peers:
        assert peer.ledger.total == pytest.approx(2.0)
        assert len(peer.history) == 2  # the third upload would exceed the budget: the peer stops
    assert all(ledger.total == pytest.approx(2.0) for ledger in coordinator.pool.ledgers.values())
    assert coordinator.history[-1]["epsilon_spent"] == pytest.approx(2.0)


@pytest.mark.parametrize("private", [False, True])
async def test_numericsparse_noise_is_not_derived_from_the_public_run_seed(private):
    """Same config twice: plain DSSGD repeats exactly; with ε, the noise differs (else anyone holding
    the config could regenerate and subtract it)."""
    settings = {"theta_u": 0.1, "gamma": 0.05, **({"epsilon": 10.0} if private else {})}
    config = demo_config(algorithm="dssgd", rounds=1, peers=1, order="sync", algorithm_settings=settings)
    finals = []
    for _ in range(2):
        coordinator, _ = await run_coordinator(config)
        assert coordinator.round == 1
        finals.append(coordinator.algorithm.params.copy())
    assert np.array_equal(finals[0], finals[1]) is not private


class RawClient:
    """A hand-driven client session, to send what honest peers never would."""

    def __init__(self, network, address, name):
        self.network, self.address, self.name = network, address, name
        self.crossed = []

    async def join(self):
        self.stream = await dial(self.network, self.address, Connection(Role.CLIENT, local_id=self.name,
                                                                       run_id="test"))
        await self.stream.send(JoinRequest())
        reply = await self.stream.receive()
        if isinstance(reply, Reject):
            return reply
        assert isinstance(reply, Accept)
        self.num_params = reply.num_params
        await self.stream.send(SpecConfirm(spec_hash=reply.spec_hash))
        assert isinstance(await self.stream.receive(), SpecReply)
        await self.stream.send(PeerReport(metrics={"ready": True}))
        return reply

    async def next_round(self):
        if self.crossed:  # a round start that arrived while waiting for an Ack
            return self.crossed.pop(0)
        while True:
            message = await self.stream.receive()
            if isinstance(message, (RoundStart, EndOfRun)):
                return message

    async def upload(self, vector, round_, base=None):
        await self.stream.send(Upload(vector=vector, round=round_, base_version=round_ if base is None else base,
                                      num_samples=10))
        while True:
            message = await self.stream.receive()
            if isinstance(message, Ack):
                return message
            if isinstance(message, RoundStart):
                self.crossed.append(message)


async def test_the_server_decides_and_says_why():
    """Each round, one upload: a rejected one also closes the round (the peer has answered)."""
    config = demo_config(peers=1, rounds=5, acceptance=AcceptanceConfig(max_norm=100.0))
    async with serving(config) as (coordinator, network, address, nursery):
        client = RawClient(network, address, "mallory")
        await client.join()
        n = client.num_params
        attempts = [
            (np.zeros(n - 1, np.float32), None),  # wrong length
            (np.full(n, 2.0, np.float32), None),  # norm 2 * sqrt(4810) > 100
            (SparseVector.empty(n), -1),  # computed on the previous round's model
            (np.full(n, np.nan, np.float32), None),  # diverged
            (SparseVector.empty(n), None),  # fine
        ]
        client.stream.conn.limits = Limits(allow_nonfinite=True).for_model(n)  # let mallory send NaN
        acks = []
        for vector, base_shift in attempts:
            start = await client.next_round()
            base = start.round + (base_shift or 0)
            acks.append(await client.upload(vector, start.round, base=base))
        acks.append(await client.upload(SparseVector.empty(n), 4))  # again, after the round closed
        await client.stream.aclose()
    assert [a.accepted for a in acks] == [False, False, False, False, True, False]
    assert acks[0].reason == AckReason.INVALID and "wrong length" in acks[0].detail
    assert acks[1].reason == AckReason.POLICY and "norm" in acks[1].detail
    assert acks[2].reason == AckReason.STALE and "stale" in acks[2].detail
    assert acks[3].reason == AckReason.INVALID and "non finite" in acks[3].detail
    assert acks[5].reason == AckReason.STALE
    assert coordinator.pool.stats.applied == 1 and coordinator.pool.stats.rejected == 5
    assert coordinator.history[-1]["rejected_reasons"]["wrong length"] == 1


async def test_duplicate_peer_name_is_refused():
    config = demo_config(peers=1, rounds=1, round_timeout=5.0)
    async with serving(config) as (coordinator, network, address, nursery):
        first, second = RawClient(network, address, "same"), RawClient(network, address, "same")
        await first.join()
        reply = await second.join()
        assert isinstance(reply, Reject)
        nursery.cancel_scope.cancel()


def test_policy_rejects_non_finite_stale_and_oversized():
    policy = AcceptancePolicy(AcceptanceConfig(max_staleness=1, max_norm=5.0), num_params=4)
    good = np.ones(4, np.float32)
    assert policy.check("a", 3, 3, 3, good) is Reason.ACCEPTED
    assert policy.check("a", 3, 3, 3, np.array([1, np.nan, 0, 0], np.float32)) is Reason.NON_FINITE
    assert policy.check("a", 3, 1, 3, good) is Reason.STALE
    assert policy.check("a", 3, 2, 3, good) is Reason.ACCEPTED  # within the staleness bound
    assert policy.check("a", 3, 3, 3, good * 10) is Reason.NORM_TOO_LARGE
    assert policy.check("a", 3, 3, 3, np.ones(5, np.float32)) is Reason.WRONG_LENGTH
    policy.record("a", 3)
    assert policy.check("a", 3, 3, 3, good) is Reason.DUPLICATE


def test_policy_forgets_only_rounds_too_old_to_accept():
    policy = AcceptancePolicy(AcceptanceConfig(max_staleness=1), num_params=4)
    for peer, r in [("a", 1), ("b", 2), ("a", 4)]:
        policy.record(peer, r)
    policy.forget_before(4)  # rounds >= 4 - 1 - 1 stay
    assert policy.seen == {("b", 2), ("a", 4)}
    policy.restore({("c", 7)})
    policy.forget_before(5)
    assert policy.seen == {("c", 7)}
    policy.forget_before(9)
    assert policy.seen == {("c", 7)}
    policy.forget_before(10)
    assert policy.seen == set()


def test_pool_rejects_unsorted_indices_unless_the_codec_checked_them():
    from ringfl.algorithms import DSSGDCoordinator
    from ringfl.algorithms.base import AlgorithmSettings, InvalidUpdate, Update
    from ringfl.vectors import SparseVector

    server = DSSGDCoordinator(np.zeros(8, np.float32), AlgorithmSettings(theta_u=0.5), np.random.default_rng(0))
    unsorted = SparseVector(8, np.array([3, 1], np.uint32), np.ones(2, np.float32))
    with pytest.raises(InvalidUpdate, match="sorted"):
        server.submit(Update("p", 0, unsorted))
    server.submit(Update("p", 0, SparseVector(8, np.array([1, 3], np.uint32), np.ones(2, np.float32))))
    assert server.params[[1, 3]].tolist() == [1.0, 1.0]


async def test_round_closes_at_deadline_without_a_missing_peer():
    """A peer that joins but never answers must not block the round forever."""
    config = demo_config(peers=2, min_peers=1, rounds=1, round_timeout=1.0)
    async with serving(config) as (coordinator, network, address, nursery):
        silent = RawClient(network, address, "silent")
        await silent.join()
        from ringfl.peer import Peer, PeerOptions

        nursery.start_soon(Peer(network, PeerOptions(coordinator=address, name="honest", run_id="test")).run)
    assert coordinator.round == 1
    assert coordinator.history[-1]["participants"] == 1


@pytest.mark.parametrize("order", ["random", "async"])
async def test_dssgd_exchange_orders(order):
    config = demo_config(algorithm="dssgd", order=order, rounds=3, algorithm_settings={"theta_u": 0.1})
    coordinator, peers = await run_coordinator(config)
    accuracy = [r["accuracy"] for r in coordinator.history]
    assert accuracy[-1] > accuracy[0] + 0.3, accuracy
    assert coordinator.pool.stats.applied >= 3 * len(peers) - 1  # async: a straggler may be late
    assert all(len(p.history) == 3 for p in peers)


async def test_acknowledged_uploads_survive_a_crash(tmp_path):
    """Kill the coordinator mid-round: every upload it acknowledged is back after --resume."""
    from ringfl.peer import Peer, PeerOptions

    config = demo_config(rounds=3, peers=3, min_peers=3, algorithm="fedavg")
    coordinator = Coordinator(config, MemoryNetwork(), tmp_path)
    network = coordinator.network
    peers = []

    def acked_in(round_: int) -> int:
        return sum(1 for p in peers for m in p.history if m["round"] == round_ + 1 and m["accepted"])  # 1-based

    async with trio.open_nursery() as nursery:
        address = await nursery.start(coordinator.run)
        for i in range(3):
            peers.append(Peer(network, PeerOptions(coordinator=address, name=f"p{i}", peers=3, index=i,
                                                   run_id="test")))
            nursery.start_soon(peers[-1].run)
        with trio.fail_after(60):
            while acked_in(1) < 1:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()  # the crash: nothing is written on the way out
    acked_total = acked_in(0) + acked_in(1)
    assert coordinator.round == 1 and acked_in(1) < 3
    resumed = Coordinator(config, MemoryNetwork(), tmp_path, resume=True)
    assert resumed.round == 1
    assert resumed.pool.stats.applied >= acked_total
    assert resumed.algorithm.pending >= acked_in(1)
    assert resumed.pool.stats.applied == 3 + resumed.algorithm.pending


async def test_peer_ledger_persists_across_restarts(tmp_path):
    """A restarted peer remembers the ε it spent and refuses uploads past the budget sooner."""
    from ringfl.peer import Peer, PeerOptions

    settings = {"theta_u": 0.1, "gamma": 0.05, "epsilon": 1.0, "budget": 3.0}
    ledger = tmp_path / "ledger.json"
    spent = []
    for _ in range(2):
        config = demo_config(algorithm="dssgd", rounds=2, peers=1, round_timeout=2.0, algorithm_settings=settings)
        network = MemoryNetwork()
        coordinator = Coordinator(config, network)
        async with trio.open_nursery() as nursery:
            address = await nursery.start(coordinator.run)
            peer = Peer(network, PeerOptions(coordinator=address, name="p", run_id="test", ledger_path=str(ledger)))
            nursery.start_soon(peer.run)
        spent.append((peer.ledger.total, len(peer.history)))
    assert spent == [(2.0, 2), (3.0, 1)]  # the second run could afford only one more epoch


async def test_robust_median_resists_a_sign_flipping_peer():
    from ringfl.peer import Peer, PeerOptions

    results = {}
    for rule in ("mean", "median"):
        config = demo_config(peers=5, min_peers=5, rounds=3, algorithm="fedavg", algorithm_settings={"robust": rule})
        network = MemoryNetwork()
        coordinator = Coordinator(config, network)
        async with trio.open_nursery() as nursery:
            address = await nursery.start(coordinator.run)
            for i in range(5):
                attack = "scale:-4" if i == 0 else None
                nursery.start_soon(Peer(network, PeerOptions(coordinator=address, name=f"p{i}", peers=5, index=i,
                                                             run_id="test", attack=attack)).run)
        results[rule] = coordinator.history[-1]["accuracy"]
    assert results["median"] > results["mean"] + 0.1, results


async def test_max_parallel_starts_synchronous_rounds_in_groups():
    """FedAvg aggregates at the end of the round, so groups give the same model as all at once."""
    together, _ = await run_coordinator(demo_config(rounds=2, peers=4, min_peers=4))
    grouped, _ = await run_coordinator(demo_config(rounds=2, peers=4, min_peers=4, max_parallel=2))
    assert np.array_equal(together.algorithm.params, grouped.algorithm.params)
    assert grouped.history[-1]["participants"] == 4


async def test_a_slow_write_ahead_log_does_not_let_the_next_round_overtake_the_ack(tmp_path, monkeypatch):
    """The round closes only once every answer is acknowledged: with a slow disk (fsync), a round
    start sent before an Ack used to be skipped by the peer, which then sat out a round."""
    import time

    from ringfl.runtime.wal import UpdateLog

    append = UpdateLog.append

    def slow_append(self, uploads):
        time.sleep(0.2)
        append(self, uploads)

    monkeypatch.setattr(UpdateLog, "append", slow_append)
    config = demo_config(rounds=3, peers=3, min_peers=3, round_timeout=30.0, algorithm="fedavg")
    with trio.fail_after(60):  # a skipped round start would wait out two round timeouts
        coordinator, peers = await run_coordinator(config, out_dir=tmp_path)
    assert [r["participants"] for r in coordinator.history[1:]] == [3, 3, 3]
    assert all([m["round"] for m in p.history] == [1, 2, 3] for p in peers)  # as people count them


async def test_a_round_start_that_crosses_the_ack_is_kept_for_next():
    """Another server may start the next round before acknowledging: the peer plays it after."""
    from ringfl.peer import Peer, PeerOptions

    class Scripted:
        def __init__(self, *messages):
            self.messages = list(messages)

        async def receive(self, timeout=None):
            return self.messages.pop(0)

    peer = Peer(MemoryNetwork(), PeerOptions(coordinator="nowhere"))
    peer.stream = Scripted(RoundStart(round=4, selected=True), PeerReport(metrics={}), Ack(accepted=True))
    assert isinstance(await peer._expect(Ack), Ack)
    assert peer._crossed is not None and peer._crossed.round == 4


async def test_the_run_admits_a_bounded_number_of_peer_names():
    """Every admitted name is remembered and checkpointed: past max_members new names are refused,
    while a name the run knows may always come back."""
    async with serving(demo_config(peers=2, max_members=2, rounds=1, join_timeout=30.0)) as (coordinator, network, address, nursery):
        alice = RawClient(network, address, "alice")
        await alice.join()
        await RawClient(network, address, "bob").join()
        refused = await RawClient(network, address, "carol").join()
        assert isinstance(refused, Reject) and refused.reason == RejectReason.RUN_FULL
        assert "max_members" in refused.detail
        await alice.stream.aclose()
        with trio.fail_after(5):
            while "alice" in coordinator.sessions:
                await trio.sleep(0.01)
        assert isinstance(await RawClient(network, address, "alice").join(), Accept)
        nursery.cancel_scope.cancel()
    assert sorted(coordinator.indices) == ["alice", "bob"]


async def test_connections_that_never_join_are_capped():
    """Idle connections hold a slot until their join deadline; past max_unjoined new ones are closed
    at once. An honest peer that meets a full house retries and joins once a slot frees up."""
    from ringfl.peer import Peer, PeerOptions

    async with serving(demo_config(peers=1, max_unjoined=1, rounds=1, join_timeout=30.0)) as (coordinator, network, address, nursery):
        idle = await network.connect(address)
        await trio.testing.wait_all_tasks_blocked()
        extra = await network.connect(address)
        with trio.fail_after(5):
            assert await extra.receive_some() == b""  # closed without a word
        peer = Peer(network, PeerOptions(coordinator=address, name="honest", run_id="test"))
        nursery.start_soon(peer.run)
        with trio.fail_after(5):
            while coordinator.refused_connections < 2:  # the peer was turned away too
                await trio.sleep(0.01)
        await idle.aclose()
    assert coordinator.round == 1 and len(peer.history) == 1


@pytest.mark.parametrize(("scale", "expected"), [("sum", 1.0), ("peers", 0.5)])
async def test_async_scale_divides_uploads_by_the_live_peers(scale, expected, tmp_path):
    """order: async adds each upload as it comes (the paper); async_scale: peers averages steps
    that live peers computed at the same time instead, and logs what it applied."""
    settings = {"theta_u": 1.0, "async_scale": scale}
    config = demo_config(algorithm="dssgd", order="async", peers=2, rounds=2, algorithm_settings=settings)
    async with serving(config, out_dir=tmp_path) as (coordinator, network, address, nursery):
        first, second = RawClient(network, address, "a"), RawClient(network, address, "b")
        await first.join()
        await second.join()
        start = await first.next_round()
        before = coordinator.algorithm.params.copy()
        n = first.num_params
        step = SparseVector(n, np.array([0, 1], np.uint32), np.ones(2, np.float32))
        assert (await first.upload(step, start.round)).accepted
        nursery.cancel_scope.cancel()
    np.testing.assert_allclose(coordinator.algorithm.params[:2] - before[:2], expected, rtol=1e-6)
    from ringfl.runtime.wal import UpdateLog

    (logged,) = UpdateLog(tmp_path / "updates.wal", n).read()  # a resume replays what was applied
    assert logged.vector.values.tolist() == [expected, expected]


async def test_per_peer_tokens_admit_each_peer_under_its_own_name_only(tmp_path):
    from ringfl.peer import JoinRefused, Peer, PeerOptions
    from ringfl.protocol import peer_token

    run_token = b"0123456789abcdef0123456789abcdef"
    (tmp_path / "run.token").write_bytes(run_token)
    config = demo_config(peers=1, rounds=1, token_file=str(tmp_path / "run.token"), token_per_peer=True)
    network = MemoryNetwork()
    coordinator = Coordinator(config, network)

    def peer(name, token):
        return Peer(network, PeerOptions(coordinator=address, name=name, run_id="test", token=token))

    async with trio.open_nursery() as nursery:
        address = await nursery.start(coordinator.run)
        with pytest.raises(JoinRefused, match="join failed"):  # mallory holds alice's token
            await peer("mallory", peer_token(run_token, "alice")).run()
        alice = peer("alice", peer_token(run_token, "alice"))
        nursery.start_soon(alice.run)
    assert len(alice.history) == 1 and sorted(coordinator.indices) == ["alice"]


async def test_an_upload_for_a_closed_round_does_not_answer_the_next_one():
    """A slow peer's upload for a round that closed at its deadline is rejected, and does not count
    as its answer to the round under way: the peer still plays that round, and is accepted."""
    config = demo_config(peers=2, min_peers=1, rounds=3, round_timeout=1.0, join_timeout=30.0)
    async with serving(config) as (coordinator, network, address, nursery):
        fast, slow = RawClient(network, address, "fast"), RawClient(network, address, "slow")
        await fast.join()
        await slow.join()
        n = fast.num_params
        first = await fast.next_round()
        await slow.next_round()
        assert (await fast.upload(SparseVector.empty(n), first.round)).accepted  # slow misses the deadline
        second = await fast.next_round()
        late = await slow.upload(SparseVector.empty(n), first.round)
        assert not late.accepted and late.reason == AckReason.STALE
        assert (await fast.upload(SparseVector.empty(n), second.round)).accepted
        assert (await slow.next_round()).round == second.round
        assert (await slow.upload(SparseVector.empty(n), second.round)).accepted  # the round waited for it
        with trio.fail_after(5):
            while len(coordinator.history) < 3:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [r["participants"] for r in coordinator.history[1:3]] == [1, 2]


async def test_joins_that_never_finish_hold_no_member_places():
    """Only names that completed a join count against max_members: half-finished joins (no spec
    confirmation, with a token: no proof) cannot fill the run for honest peers."""
    async with serving(demo_config(peers=2, max_members=2, rounds=1, join_timeout=30.0)) as (coordinator, network, address, nursery):
        for name in ("stranger-1", "stranger-2"):
            stream = await dial(network, address, Connection(Role.CLIENT, local_id=name, run_id="test"))
            await stream.send(JoinRequest())
            assert isinstance(await stream.receive(), Accept)  # and never confirms the spec
        assert isinstance(await RawClient(network, address, "alice").join(), Accept)
        assert isinstance(await RawClient(network, address, "bob").join(), Accept)
        refused = await RawClient(network, address, "carol").join()
        assert isinstance(refused, Reject) and refused.reason == RejectReason.RUN_FULL
        nursery.cancel_scope.cancel()
    assert sorted(coordinator.indices) == ["alice", "bob"]


async def test_a_peer_still_training_when_the_run_ends_leaves_quietly():
    """The last round closes at its deadline without a straggler and the coordinator ends the run;
    the straggler's upload then finds the connection gone: it stops without an error."""
    from ringfl.peer import Peer, PeerOptions

    class Straggler(Peer):
        async def _local_work(self, start, round_):
            await trio.sleep(3.0)
            return await super()._local_work(start, round_)

    config = demo_config(peers=2, min_peers=1, rounds=1, round_timeout=0.5, join_timeout=30.0)
    async with serving(config) as (coordinator, network, address, nursery):
        options = {"coordinator": address, "run_id": "test"}
        straggler = Straggler(network, PeerOptions(name="slow", **options))
        nursery.start_soon(straggler.run)
        nursery.start_soon(Peer(network, PeerOptions(name="fast", **options)).run)
    assert coordinator.history[-1]["participants"] == 1 and straggler.history == []


async def test_joins_confirming_at_once_cannot_overshoot_max_members():
    network = MemoryNetwork()
    coordinator = Coordinator(demo_config(peers=2, max_members=2, rounds=1, join_timeout=30.0), network)
    replies = []
    async with trio.open_nursery() as nursery:
        address = await nursery.start(coordinator.run)
        streams = []
        for i in range(5):
            stream = await dial(network, address, Connection(Role.CLIENT, local_id=f"x{i}", run_id="test"))
            await stream.send(JoinRequest())
            assert isinstance(await stream.receive(), Accept)
            streams.append(stream)

        async def confirm(stream):
            await stream.send(SpecConfirm(spec_hash=coordinator.spec.hash))
            replies.append(await stream.receive(timeout=5))

        async with trio.open_nursery() as confirming:
            for stream in streams:
                confirming.start_soon(confirm, stream)
        nursery.cancel_scope.cancel()
    assert len(coordinator.indices) == 2
    assert sorted(type(r).__name__ for r in replies) == ["Goodbye"] * 3 + ["SpecReply"] * 2
    assert all("max_members" in r.reason for r in replies if not isinstance(r, SpecReply))


async def test_an_error_in_the_last_round_is_not_taken_for_the_end_of_the_run():
    """Only a connection closed after the last round's deadline means the run ended without the
    peer; a refused frame in the last round is still an error."""
    from ringfl.peer import Peer, PeerOptions
    from ringfl.transport import TransportError

    config = demo_config(peers=1, rounds=1, max_frame=19_368)  # Params fit, the dense upload (19,392 B) not
    network = MemoryNetwork()
    coordinator = Coordinator(config, network)
    peer = Peer(network, PeerOptions(coordinator="", name="p", run_id="test"))
    with pytest.raises(Exception) as failure:  # noqa: PT011 - the nursery wraps it in a group
        async with trio.open_nursery() as nursery:
            address = await nursery.start(coordinator.run)
            peer.options = PeerOptions(coordinator=address, name="p", run_id="test")
            await peer.run()
    assert failure.group_contains(TransportError)  # the refusal, or the connection it closed


async def test_an_abandoned_join_gives_its_index_back():
    """Indices choose the peers' partitions (index mod peers): a join that never confirmed must not
    shift the next peer onto another peer's shard."""
    async with serving(demo_config(peers=2, rounds=1, join_timeout=30.0)) as (coordinator, network, address, nursery):
        stream = await dial(network, address, Connection(Role.CLIENT, local_id="quitter", run_id="test"))
        await stream.send(JoinRequest())
        assert (await stream.receive()).info["index"] == 0
        await stream.aclose()  # gone before confirming the spec
        with trio.fail_after(5):
            while coordinator.pending_indices:
                await trio.sleep(0.01)
        first, second = RawClient(network, address, "a"), RawClient(network, address, "b")
        assert (await first.join()).info["index"] == 0 and (await second.join()).info["index"] == 1
        nursery.cancel_scope.cancel()
