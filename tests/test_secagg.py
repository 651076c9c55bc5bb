"""Secure aggregation: the coordinator's view, exactness, dropouts, aborts, and real TCP runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import ringfl.secagg.client as secagg_client
from ringfl.config import parse_config
from ringfl.errors import ConfigError
from ringfl.peer import Peer
from ringfl.protocol import LocalProtocolError, RemoteProtocolError, decode, encode
from ringfl.protocol.codec import Limits
from ringfl.protocol.secagg_messages import (
    SecAggMasked,
    SecAggShares,
    SecAggUnmask,
    SecAggUnmaskRequest,
)
from ringfl.secagg import crypto, dp
from ringfl.secagg.quantize import Quantizer
from ringfl.secagg.rounds import ClientRound, SecAggAbort, SecAggSettings
from ringfl.secagg.simulate import simulate_round
from ringfl.transport import TcpNetwork
from ringfl.vectors import as_dense
from tests.helpers import demo_config, run_coordinator

N_PARAMS = 4000


def peer_inputs(n: int, seed: int = 0, size: int = N_PARAMS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"p{i:02d}": rng.uniform(-0.6, 0.6, size).astype(np.float32) for i in range(n)}


def decoded_error(result, inputs: dict[str, np.ndarray], quantizer: Quantizer) -> float:
    got = quantizer.decode_sum(result.total, len(result.survivors))
    want = sum(quantizer.clip(inputs[p]) for p in result.survivors)
    return float(np.abs(got - want).max())


# --- quantisation -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), bound=st.floats(0.01, 100.0), seed=st.integers(0, 2**32 - 1))
def test_quantised_sum_is_exact_within_the_documented_bound(n: int, bound: float, seed: int) -> None:
    q = Quantizer(bound, n)
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-1.5 * bound, 1.5 * bound, (n, 257))  # some coordinates need clipping
    total = np.zeros(257, np.uint32)
    for x in xs:
        total += q.encode(x)
    error = np.abs(q.decode_sum(total, n) - q.clip(xs).sum(axis=0)).max()
    assert error <= q.error_bound(n) + 1e-12 * n * bound  # + float64 rounding of the reference sum


def test_quantizer_refuses_what_32_bits_cannot_hold() -> None:
    with pytest.raises(ConfigError, match="32 bits"):
        Quantizer(1e9, 100)
    with pytest.raises(ConfigError, match="max_dropout"):
        SecAggSettings(max_dropout=0.5)


# --- the coordinator's view ---------------------------------------------------------------------


def capture(kind: type) -> tuple[dict, callable]:
    seen: dict = {}

    def tamper(peer: str, message):
        if isinstance(message, kind):
            seen[peer] = message
        return message

    return seen, tamper


def test_one_masked_upload_looks_uniform_and_the_sum_is_exact() -> None:
    inputs = peer_inputs(8)
    inputs["p00"][:] = 0.25  # a constant input: its encoding is one value repeated
    quantizer = Quantizer(1.0, 8)
    masked, tamper = capture(SecAggMasked)
    result = simulate_round(inputs, SecAggSettings(), quantizer, tamper=tamper)
    plain = quantizer.encode(inputs["p00"]).astype(np.float64) / 2**32
    seen = masked["p00"].masked.astype(np.float64) / 2**32
    assert stats.kstest(plain, "uniform").pvalue < 1e-6  # the test can tell an unmasked input
    assert stats.kstest(seen, "uniform").pvalue > 1e-3
    counts = np.bincount(masked["p00"].masked >> 24, minlength=256)  # chi-square on the top byte
    assert stats.chisquare(counts).pvalue > 1e-3
    assert decoded_error(result, inputs, quantizer) <= quantizer.error_bound(8)


def test_the_server_cannot_unmask_a_single_peer() -> None:
    """For a survivor the server learns the self-mask seed but never the pairwise mask key: the
    input minus its self-mask is still uniform. With fewer than t shares the seed is garbage."""
    inputs = peer_inputs(6)
    inputs["p00"][:] = 0.0
    quantizer = Quantizer(1.0, 6)
    masked, tamper = capture(SecAggMasked)
    unmasks, tamper2 = capture(SecAggUnmask)
    result = simulate_round(inputs, SecAggSettings(max_dropout=0.34), quantizer,
                            tamper=lambda p, m: tamper2(p, tamper(p, m)))
    assert result.survivors == sorted(inputs)
    # Every b-share of p00 the server received (one per holder), keyed by holder x-coordinate.
    b_shares = {i + 1: bytes(u.shares[: crypto.SHARE_SIZE]) if u.peers[0] == "p00" else
                bytes(u.shares[u.peers.index("p00") * crypto.SHARE_SIZE:][: crypto.SHARE_SIZE])
                for i, (peer, u) in enumerate(sorted(unmasks.items()))}
    threshold = SecAggSettings(max_dropout=0.34).threshold(6)
    b = crypto.combine(dict(list(b_shares.items())[:threshold]))
    rest = masked["p00"].masked - crypto.mask_words(b, N_PARAMS)  # pairwise masks remain
    assert not np.any(rest == 0) or np.count_nonzero(rest == 0) < 5
    assert stats.kstest(rest.astype(np.float64) / 2**32, "uniform").pvalue > 1e-3
    with pytest.raises(crypto.ShareError):  # t - 1 shares: a random field element, not a seed
        crypto.combine(dict(list(b_shares.items())[: threshold - 1]))


def test_relayed_shares_are_sealed_from_the_server() -> None:
    client = ClientRound("a", 0, "run", SecAggSettings(max_dropout=0.0), 10)
    other = ClientRound("b", 0, "run", SecAggSettings(max_dropout=0.0), 10)
    keys = {p: c.keys() for p, c in (("a", client), ("b", other))}
    from ringfl.protocol.secagg_messages import SecAggRoster

    roster = SecAggRoster(peers=("a", "b"), points=np.array([1, 2], np.uint32), threshold=2,
                          keys=np.concatenate([np.concatenate([keys[p].c_pk, keys[p].s_pk]) for p in "ab"]))
    sealed = bytes(client.shares(roster).sealed)
    wrong_key = crypto.agree(crypto.new_private_key(), bytes(keys["b"].c_pk), b"guess")
    with pytest.raises(crypto.ShareError):
        crypto.open_sealed(wrong_key, sealed, b"guess")


# --- dropouts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["masked", "unmask"])
def test_thirty_percent_drop_and_the_round_closes_with_the_right_sum(phase: str) -> None:
    """"masked": they drop after sharing (their pairwise masks are rebuilt from mask-key shares);
    "unmask": they drop after masking (their inputs count; self-masks rebuilt from shares)."""
    inputs = peer_inputs(10, seed=3)
    quantizer = Quantizer(1.0, 10)
    dead = {"p01", "p04", "p08"}
    result = simulate_round(inputs, SecAggSettings(max_dropout=0.3), quantizer, drop={phase: dead})
    expected = sorted(inputs) if phase == "unmask" else sorted(set(inputs) - dead)
    assert result.survivors == expected
    assert decoded_error(result, inputs, quantizer) <= quantizer.error_bound(len(expected))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 9), degree=st.sampled_from([0, 2, 4]), data=st.data())
def test_any_allowed_dropout_pattern_gives_the_right_sum(n: int, degree: int, data) -> None:
    inputs = peer_inputs(n, seed=n, size=32)
    settings = SecAggSettings(max_dropout=0.3, degree=degree)
    budget = int(0.3 * n) if degree == 0 else 0  # a sparse graph may starve one neighbourhood
    dead = data.draw(st.lists(st.sampled_from(sorted(inputs)), max_size=budget, unique=True))
    phases = data.draw(st.lists(st.sampled_from(["shares", "masked", "unmask"]), min_size=len(dead),
                                max_size=len(dead)))
    drop: dict[str, set[str]] = {}
    for peer, phase in zip(dead, phases):
        drop.setdefault(phase, set()).add(peer)
    quantizer = Quantizer(1.0, n)
    result = simulate_round(inputs, settings, quantizer, drop=drop)
    gone_early = drop.get("shares", set()) | drop.get("masked", set())
    assert result.survivors == sorted(set(inputs) - gone_early)
    assert decoded_error(result, inputs, quantizer) <= quantizer.error_bound(len(result.survivors))


def test_secagg_plus_graph_survives_a_dropout_with_fewer_bytes() -> None:
    inputs = peer_inputs(24, seed=5, size=500)
    quantizer = Quantizer(1.0, 24)
    full = simulate_round(inputs, SecAggSettings(), quantizer)
    sparse = simulate_round(inputs, SecAggSettings(degree=8, max_dropout=0.2), quantizer,
                            drop={"unmask": {"p03"}})
    assert sparse.survivors == sorted(inputs)
    assert decoded_error(sparse, inputs, quantizer) <= quantizer.error_bound(24)
    assert sparse.bytes_up < full.bytes_up


def test_too_many_dropouts_abort_with_a_reason() -> None:
    inputs = peer_inputs(10)
    with pytest.raises(SecAggAbort, match="only 6 masked inputs arrived, 7 needed"):
        simulate_round(inputs, SecAggSettings(max_dropout=0.3), Quantizer(1.0, 10),
                       drop={"masked": {"p01", "p02", "p03", "p04"}})


# --- malformed and missing shares --------------------------------------------------------------


def test_a_missing_share_aborts_the_round() -> None:
    def drop_one(peer, message):
        if peer == "p02" and isinstance(message, SecAggShares):
            return dataclasses.replace(message, recipients=message.recipients[1:],
                                       sealed=message.sealed[crypto.GCM_TAG + 2 * crypto.SHARE_SIZE:])
        return message

    with pytest.raises(SecAggAbort, match=r"p02 sent shares for the wrong peers \(missing \['p00'\]"):
        simulate_round(peer_inputs(5), SecAggSettings(), Quantizer(1.0, 5), tamper=drop_one)


def test_a_malformed_unmasking_share_aborts_the_round() -> None:
    def garble(peer, message):
        if peer == "p00" and isinstance(message, SecAggUnmask):
            shares = message.shares.copy()
            shares[5] ^= 0xFF
            return dataclasses.replace(message, shares=shares)
        return message

    with pytest.raises(SecAggAbort, match="aborted: .*p00.s self-mask seed"):
        simulate_round(peer_inputs(5), SecAggSettings(max_dropout=0.0), Quantizer(1.0, 5), tamper=garble)


def test_an_undecryptable_share_is_left_out_and_spare_shares_cover_it() -> None:
    """A tampered ciphertext fails its GCM tag at the recipient, who leaves that share out; with
    t < n holders the others still recover the seed."""
    def garble(peer, message):
        if peer == "p01" and isinstance(message, SecAggShares):
            sealed = message.sealed.copy()
            sealed[0] ^= 1
            return dataclasses.replace(message, sealed=sealed)
        return message

    inputs = peer_inputs(6)
    quantizer = Quantizer(1.0, 6)
    result = simulate_round(inputs, SecAggSettings(max_dropout=0.34), quantizer, tamper=garble)
    assert decoded_error(result, inputs, quantizer) <= quantizer.error_bound(6)


def test_the_codec_refuses_wrongly_sized_secagg_messages() -> None:
    bad = SecAggShares(recipients=("a", "b"), sealed=np.zeros(10, np.uint8))
    with pytest.raises(LocalProtocolError, match="sealed must hold 2 x 148 bytes"):
        encode(bad)
    with pytest.raises(LocalProtocolError, match="over the limit 8"):
        encode(SecAggMasked(masked=np.zeros(9, np.uint32)), Limits().for_model(8))
    good = encode(SecAggUnmaskRequest(survivors=("a",), dropped=("b",)))
    assert decode(good) == SecAggUnmaskRequest(survivors=("a",), dropped=("b",))
    with pytest.raises(RemoteProtocolError, match="lists a peer twice"):
        decode(good.replace(b"\xa1b", b"\xa1a"))


# --- distributed DP -----------------------------------------------------------------------------


def test_noise_shares_add_up_to_central_noise() -> None:
    rng = np.random.default_rng(0)
    sigma, clip, t, n = 1.1, 0.5, 7, 10
    total = sum(dp.clip_and_noise(np.zeros(20000), clip, sigma, t, rng) for _ in range(n))
    assert np.std(total) == pytest.approx(sigma * clip * np.sqrt(n / t), rel=0.03)
    big = dp.clip_and_noise(np.full(100, 10.0), clip, 0.0, t, rng)
    assert np.linalg.norm(big) == pytest.approx(clip)
    assert dp.epsilon(1.1, 10, 1e-5) < dp.epsilon(1.1, 20, 1e-5) < dp.epsilon(0.8, 20, 1e-5)


# --- over real TCP, with MXNet training -------------------------------------------------------


class KilledAfterMasking(Peer):
    """Its task dies right after it sent its masked input in round 0: the coordinator sees the
    connection drop, as when a peer process is killed."""

    async def run(self):
        with trio.CancelScope() as self.scope:
            return await super().run()

    async def _expect(self, kind):
        if isinstance(kind, tuple) and SecAggUnmaskRequest in kind and self.last_round == 0:
            self.scope.cancel()
            await trio.sleep(0)
        return await super()._expect(kind)


def recording_uploads(monkeypatch) -> dict:
    uploads: dict = {}
    original = secagg_client.secure_upload

    async def record(peer, info, update, round_):
        uploads[(peer.name, round_)] = as_dense(update).copy()
        return await original(peer, info, update, round_)

    monkeypatch.setattr(secagg_client, "secure_upload", record)
    return uploads


async def test_thirty_percent_killed_after_masking_over_tcp(monkeypatch) -> None:
    uploads = recording_uploads(monkeypatch)
    snapshots: list[np.ndarray] = []
    config = demo_config(rounds=2, peers=10, min_peers=1, secagg={"max_dropout": 0.3},
                         host="127.0.0.1", round_timeout=60.0)
    killed = {"p1", "p5", "p8"}
    from ringfl.peer import PeerOptions
    from tests.helpers import serving

    async with serving(config, TcpNetwork()) as (coordinator, network, address, nursery):
        coordinator.on_round.append(lambda record: snapshots.append(coordinator.algorithm.params.copy()))
        for i in range(10):
            cls = KilledAfterMasking if f"p{i}" in killed else Peer
            nursery.start_soon(cls(network, PeerOptions(coordinator=address, name=f"p{i}", peers=10, index=i,
                                                        run_id=config.run_id)).run)
    summary = coordinator._summary()
    rounds = summary["secagg"]["rounds"]
    assert [r["survivors"] for r in rounds] == [10, 7]  # the killed peers' inputs still count in round 0
    quantizer = Quantizer(1.0, 10)
    for r, (before, after) in enumerate(zip(snapshots, snapshots[1:])):
        members = sorted(p for p, rr in uploads if rr == r)
        want = sum(quantizer.clip(uploads[(p, r)]) for p in members) / len(members)
        bound = quantizer.error_bound(len(members)) / len(members) + 1e-6  # + float32 rounding
        assert np.abs((after - before) - want).max() <= bound
    assert summary["rounds"] == 2 and summary["final_accuracy"] > 0.3


async def test_a_malformed_share_aborts_that_round_and_the_run_goes_on(monkeypatch) -> None:
    original = ClientRound.shares

    def shares(self, roster):
        message = original(self, roster)
        if self.peer_id == "p2" and self.round == 0:  # one share missing
            return dataclasses.replace(message, recipients=message.recipients[1:],
                                       sealed=message.sealed[crypto.GCM_TAG + 2 * crypto.SHARE_SIZE:])
        return message

    monkeypatch.setattr(ClientRound, "shares", shares)
    coordinator, peers = await run_coordinator(demo_config(rounds=2, peers=4, secagg={}))
    rounds = coordinator._summary()["secagg"]["rounds"]
    assert "p2 sent shares for the wrong peers" in rounds[0]["aborted"]
    assert rounds[1]["survivors"] == 4
    for peer in peers:
        assert [m["accepted"] for m in peer.history] == [False, True]


def test_secagg_refuses_runs_it_cannot_protect() -> None:
    from ringfl.coordinator import Coordinator
    from ringfl.transport import MemoryNetwork

    with pytest.raises(ConfigError, match="fedavg or fedsgd"):
        Coordinator(demo_config(algorithm="dssgd", secagg={}), MemoryNetwork())
    with pytest.raises(ConfigError, match="noise_multiplier"):
        Coordinator(demo_config(secagg={"noise_multiplier": 1.0}), MemoryNetwork())
    with pytest.raises(ConfigError, match="secagg: unknown field 'k'"):
        Coordinator(parse_config({"secagg": {"k": 3}}), MemoryNetwork())


async def test_distributed_dp_fedavg_records_its_privacy_across_a_resume(tmp_path) -> None:
    secagg = {"noise_multiplier": 0.8, "clip_norm": 0.5, "bound": 2.0}
    coordinator, peers = await run_coordinator(demo_config(rounds=2, peers=4, secagg=secagg), out_dir=tmp_path)
    privacy = coordinator._summary()["secagg"]["privacy"]
    assert privacy == {"noise_multiplier": 0.8, "clip_norm": 0.5, "delta": 1e-5, "rounds": 2,
                       "epsilon": dp.epsilon(0.8, 2, 1e-5)}
    assert [r["epsilon"] for r in coordinator.secagg.history] == [dp.epsilon(0.8, r, 1e-5) for r in (1, 2)]
    assert all(m["accepted"] for peer in peers for m in peer.history)
    resumed, _ = await run_coordinator(demo_config(rounds=3, peers=4, secagg=secagg), out_dir=tmp_path, resume=True)
    assert resumed._summary()["secagg"]["privacy"]["rounds"] == 3  # ε counts the rounds before the restart


def test_a_starved_neighbourhood_aborts_before_unmasking() -> None:
    """SecAgg+: enough masked inputs overall, but one peer's share holders mostly dropped."""
    inputs = peer_inputs(12, size=64)
    settings = SecAggSettings(degree=4, max_dropout=0.2)
    from ringfl.secagg.rounds import ServerRound

    server = ServerRound(0, "sim", settings, 64)
    clients = {p: ClientRound(p, 0, "sim", settings, 64) for p in inputs}
    for p, c in clients.items():
        server.add_keys(p, c.keys())
    rosters = server.rosters()
    victim = "p00"
    gone = set(server.members[victim].neighbours[:2])  # 2 of its 5 holders; t = 4
    for p, c in clients.items():
        server.add_shares(p, c.shares(rosters[p]))
    inboxes = server.inboxes()
    for p, c in clients.items():
        if p not in gone:
            server.add_masked(p, c.masked(inboxes[p], Quantizer(1.0, 12).encode(inputs[p])))
    with pytest.raises(SecAggAbort, match="only 3 of p00's share holders sent masked inputs, 4 needed"):
        server.unmask_requests()
