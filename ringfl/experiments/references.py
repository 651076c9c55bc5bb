"""The reference lines of every experiment, trained without any protocol: centralized (all data in
one place) above, standalone (each sampled peer alone on its partition) below; and the round
records all modes share, starting from the same seeded initial model (round 0)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

from ringfl.baselines import EpochResult, train_reference
from ringfl.config import RunConfig
from ringfl.data import DataSplits, kind_params, load_source, peer_indices, prepare
from ringfl.experiments.plan import Run
from ringfl.experiments.results import PeerRecord, SettingResult, SettingRound
from ringfl.experiments.tracking import Tracker
from ringfl.model import ModelSpec, load_spec
from ringfl.model.runtime import shared_model


def run_centralized(run: Run, tracker: Tracker, started: float) -> SettingResult:
    """All training data in one place, ``rounds`` epochs: the upper line."""
    spec, splits, config, key = *_spec_and_data(run.config), run.config, run.setting.key
    rounds = [initial_round(run, started)]
    peers: list[PeerRecord] = []

    def on_epoch(epoch: EpochResult) -> None:
        rounds.append(round_record(key, epoch.epoch, [epoch.accuracy], [epoch.test_loss], 0, None, started))
        peers.append(PeerRecord(key, 0, epoch.epoch, epoch.accuracy, epoch.test_loss, 0, 0, None))
        tracker.advance(1, epoch.accuracy)

    train_reference(spec, splits, config.training, config.rounds, seed=config.seed, on_epoch=on_epoch)
    return SettingResult(run.setting, rounds, peers, time.perf_counter() - started, 1)


def run_standalone(run: Run, tracker: Tracker, started: float) -> SettingResult:
    """Each sampled peer trains alone on its own partition: the lower line (mean/min/max)."""
    spec, splits = _spec_and_data(run.config)
    config, key = run.config, run.setting.key
    partition = {p: getattr(config.partition, p) for p in kind_params(config.partition.kind)}
    peers: list[PeerRecord] = []
    share = 1 / len(run.sampled_peers)
    for index in run.sampled_peers:
        rows = peer_indices(splits.train.y, config.partition.kind, config.peers, config.seed, index, **partition)

        def on_epoch(epoch: EpochResult, index: int = index) -> None:
            peers.append(PeerRecord(key, index, epoch.epoch, epoch.accuracy, epoch.test_loss, 0, 0, None))
            tracker.advance(share, epoch.accuracy)

        train_reference(spec, splits, config.training, config.rounds, indices=rows, seed=config.seed,
                        on_epoch=on_epoch)
    rounds = [initial_round(run, started)] + [
        round_record(key, r, [p.accuracy for p in peers if p.round == r], [p.loss for p in peers if p.round == r],
                     0, None, started)
        for r in range(1, config.rounds + 1)
    ]
    return SettingResult(run.setting, rounds, peers, time.perf_counter() - started, len(run.sampled_peers))


def _spec_and_data(config: RunConfig) -> tuple[ModelSpec, DataSplits]:
    spec = load_spec(config.model)
    return spec, load_source(config.data, num_classes=spec.num_classes)


_initial_cache: dict[tuple[str, str, int], tuple[float, float]] = {}


def initial_round(run: Run, started: float) -> SettingRound:
    """Round 0: the seeded initial model every mode starts from, so all curves share a start."""
    config = run.config
    cache_key = (config.model, config.data, config.seed)
    if cache_key not in _initial_cache:
        spec, splits = _spec_and_data(config)
        model = shared_model(spec)
        _initial_cache[cache_key] = model.evaluate_sync(
            model.init_params(config.seed), prepare(splits.test.x, spec.input_shape), splits.test.y)
    loss, accuracy = _initial_cache[cache_key]
    return dataclasses.replace(round_record(run.setting.key, 0, [accuracy], [loss], 0, None, started), seconds=0.0)


def round_record(key: str, round_: int, accuracies: Sequence[float], losses: Sequence[float],
                 bytes_total: int, epsilon: float | None, started: float) -> SettingRound:
    return SettingRound(
        setting=key, round=round_, accuracy=_mean(accuracies), min_accuracy=min(accuracies, default=math.nan),
        max_accuracy=max(accuracies, default=math.nan), loss=_mean(losses), bytes_total=int(bytes_total),
        epsilon=epsilon, seconds=time.perf_counter() - started)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan
