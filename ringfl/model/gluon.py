"""The Gluon model: build a net from a spec, move flat vectors, train, evaluate.

MXNet is imported only here and in the helpers this module uses (``batches``: mini-batches as
NDArrays; ``per_example``: clipped per-example gradients for DP-SGD).

Many peers of one process share one :class:`GluonModel` and swap flat float32 vectors in and out
(copying all parameters is far cheaper than one training step), so a peer's state is just a
vector. Every method here must run on the process's single MXNet thread (see
:mod:`ringfl.model.runtime`): MXNet is not thread-safe.

Flat layout: parameters in the order of ``collect_params()`` — i.e. layer order, and within a
layer MXNet's own order (weight before bias; LSTM i2h_weight, h2h_weight, i2h_bias, h2h_bias;
batch norm gamma, beta, running_mean, running_var) — each flattened C-order. ``layout`` names
the slices.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn, rnn

from ringfl.errors import SpecError
from ringfl.model.batches import batch_range, minibatches
from ringfl.model.per_example import dense_chain, dense_clipped_sums, looped_clipped_sums
from ringfl.model.spec import LayerInfo, ModelSpec

_ENGINE_BANNER = b"MXNet start using engine:"


def _start_engine_quietly() -> None:
    """Create MXNet's engine now, without its banner.

    MXNet logs "MXNet start using engine: X" to stderr on its first operation whenever
    ``MXNET_ENGINE_TYPE`` is set, which the launchers do for every peer process (see
    :func:`ringfl.launch.child_env`); ten peers would print ten such lines into the demo. Standard
    error is diverted at the file-descriptor level (the line comes from C++) for that one
    operation and everything else written meanwhile is passed on.
    """
    if "MXNET_ENGINE_TYPE" not in os.environ:
        nd.zeros(1).wait_to_read()
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            nd.zeros(1).wait_to_read()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True) if _ENGINE_BANNER not in line]
            if kept:
                os.write(2, b"".join(kept))


_start_engine_quietly()


@dataclass(frozen=True)
class ParamSlice:
    """Where one named parameter lives in the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def stop(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class TrainResult:
    params: np.ndarray
    loss: float  # mean training loss over the samples seen
    samples: int


class CustomModel(gluon.HybridBlock):
    """Base class for user models named in a spec as ``"custom": "pkg.module:Class"``.

    Subclass it, create layers in ``__init__(self, input_shape, num_classes, **options)`` and
    implement ``hybrid_forward(self, F, x)`` returning class scores of shape (batch, num_classes).
    The class is imported locally by every participant; only the spec travels on the wire.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, **options: Any) -> None:
        super().__init__()
        self.input_shape = input_shape
        self.num_classes = num_classes


class _LastStep(gluon.HybridBlock):
    """Keep the last time step of an (N, T, C) sequence: recurrent layers feed a dense head."""

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return F.squeeze(F.slice_axis(x, axis=1, begin=-1, end=None), axis=1)


def _build_layer(info: LayerInfo) -> list[gluon.HybridBlock]:
    cfg = info.config
    kind = info.type
    if kind == "dense":
        return [nn.Dense(cfg["units"], activation=cfg["activation"], flatten=True)]
    if kind == "conv2d":
        return [
            nn.Conv2D(
                cfg["channels"], cfg["kernel"], strides=cfg["stride"], padding=cfg["padding"],
                activation=cfg["activation"],
            )
        ]
    if kind in ("maxpool", "avgpool"):
        pool = nn.MaxPool2D if kind == "maxpool" else nn.AvgPool2D
        return [pool(cfg["pool"], strides=cfg["stride"], padding=cfg["padding"])]
    if kind == "flatten":
        return [nn.Flatten()]
    if kind == "dropout":
        return [nn.Dropout(cfg["rate"])]
    if kind == "activation":
        return [nn.Activation(cfg["function"])]
    if kind == "batchnorm":
        return [nn.BatchNorm(axis=1)]
    cell = rnn.LSTM if kind == "lstm" else rnn.GRU
    blocks: list[gluon.HybridBlock] = [cell(cfg["hidden"], num_layers=cfg["layers"], layout="NTC")]
    if not cfg["return_sequences"]:
        blocks.append(_LastStep())
    return blocks


def _load_custom(spec: ModelSpec) -> gluon.HybridBlock:
    target = spec.custom or ""
    module_name, class_name = target.split(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"custom model {target!r} cannot be loaded: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, CustomModel)):
        raise SpecError(f"custom model {target!r} must subclass ringfl.model.gluon.CustomModel")
    return cls(spec.input_shape, spec.num_classes, **spec.raw.get("options", {}))


def build_net(spec: ModelSpec) -> gluon.HybridBlock:
    """The Gluon block for a spec, parameters allocated (values set by :meth:`GluonModel.init`)."""
    if spec.custom:
        net = _load_custom(spec)
    else:
        net = nn.HybridSequential()
        for info in spec.layers:
            for block in _build_layer(info):
                net.add(block)
    net.initialize(mx.init.Zero())
    net(nd.zeros((1, *spec.input_shape)))  # materialise deferred shapes
    return net


def _glorot(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Glorot-uniform, as the reference implementation uses (fans include the receptive field)."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    fan_out, fan_in = shape[0] * receptive, shape[1] * receptive
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


def _initial_value(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if name.endswith(("gamma", "running_var")):
        return np.ones(shape, np.float32)
    if len(shape) >= 2 and name.endswith("weight"):
        return _glorot(rng, shape)
    return np.zeros(shape, np.float32)


class _WithLoss(gluon.HybridBlock):
    """Net and loss as one hybridized graph: about a sixth fewer seconds per epoch under MXNet's
    NaiveEngine (peer processes that outnumber the cores), where every operator runs inline."""

    def __init__(self, net: gluon.HybridBlock, loss: gluon.loss.Loss) -> None:
        super().__init__()
        self.net, self.loss = net, loss

    def hybrid_forward(self, F: Any, x: Any, y: Any) -> Any:
        return self.loss(self.net(x), y)


class GluonModel:
    """One Gluon net plus flat-vector access, SGD training and evaluation. MXNet thread only."""

    def __init__(self, spec: ModelSpec, hybridize: bool = True) -> None:
        self.spec = spec
        self.net = build_net(spec)
        params = list(self.net.collect_params().values())
        self._params = params
        self.layout: list[ParamSlice] = []
        offset = 0
        for param in params:
            self.layout.append(ParamSlice(param.name, tuple(param.shape), offset))
            offset += math.prod(param.shape)
        self.num_params = offset
        self._slices = {part.name: part for part in self.layout}
        self._trainable = [p for p in params if p.grad_req != "null"]
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        self._net_with_loss = _WithLoss(self.net, self.loss_fn)
        if hybridize:  # one graph for net and loss (the net is also hybridized, for evaluation)
            self._net_with_loss.hybridize(static_alloc=True, static_shape=True)

    # --- flat vectors -----------------------------------------------------------------------

    def init_params(self, seed: int) -> np.ndarray:
        """Deterministic initial flat vector from a seed (numpy RNG: identical on every machine)."""
        rng = np.random.default_rng(seed)
        parts = [_initial_value(s.name, s.shape, rng).ravel() for s in self.layout]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

    def get_flat(self) -> np.ndarray:
        out = np.empty(self.num_params, dtype=np.float32)
        for param, part in zip(self._params, self.layout):
            out[part.offset : part.stop] = param.data().asnumpy().ravel()
        return out

    def set_flat(self, flat: np.ndarray) -> None:
        if flat.shape != (self.num_params,):
            raise ValueError(f"flat vector has shape {flat.shape}, model needs ({self.num_params},)")
        for param, part in zip(self._params, self.layout):
            # NDArray-to-NDArray copy: MKL-DNN-laid-out weights (conv) reject raw buffer writes
            nd.array(flat[part.offset : part.stop].reshape(part.shape)).copyto(param.data())

    # --- training -------------------------------------------------------------------------

    def train(
        self,
        params: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        *,
        lr: float,
        batch_size: int,
        epochs: int = 1,
        steps: int | None = None,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> TrainResult:
        """SGD from ``params`` on (x, y): ``epochs`` passes, or exactly ``steps`` mini-batches.

        Momentum buffers live only for this call: peers sharing the net must not share them.
        """
        rng = np.random.default_rng(seed)
        return self._fit(params, minibatches(x, y, batch_size, epochs, steps, rng),
                         lr=lr, momentum=momentum, weight_decay=weight_decay, seed=seed)

    def train_steps(
        self,
        params: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        *,
        lr: float,
        batch_size: int,
        start: int,
        steps: int,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> TrainResult:
        """SGD over mini-batches ``start .. start + steps - 1`` of the batch sequence that
        ``train(seed=seed)`` walks (epoch after epoch, each shuffled): decentralised peers exchange
        every k batches, so they train an epoch in slices and the slices must continue one shuffle.
        Consecutive slices give exactly the parameters of one ``train`` call (without momentum)."""
        rng = np.random.default_rng(seed)
        return self._fit(params, batch_range(x, y, batch_size, start, steps, rng),
                         lr=lr, momentum=momentum, weight_decay=weight_decay, seed=seed)

    def _fit(self, params: np.ndarray, batches: Any, *, lr: float, momentum: float,
             weight_decay: float, seed: int) -> TrainResult:
        self.set_flat(params)
        mx.random.seed(seed % (2**31))
        moms = [nd.zeros(p.shape) for p in self._trainable] if momentum else []
        losses, seen = [], 0
        for xb, yb in batches:
            with autograd.record():
                loss = self._net_with_loss(xb, yb)
            loss.backward()
            self._sgd_step(lr, momentum, weight_decay, xb.shape[0], moms)
            losses.append(loss.sum())  # read once at the end: no wait for the engine per batch
            seen += xb.shape[0]
        total_loss = float(nd.add_n(*losses).asscalar()) if losses else 0.0
        return TrainResult(self.get_flat(), total_loss / max(seen, 1), seen)

    def _sgd_step(self, lr: float, momentum: float, wd: float, batch: int, moms: list[Any]) -> None:
        rescale = 1.0 / batch
        for i, param in enumerate(self._trainable):
            weight, grad = param.data(), param.grad()
            if momentum:
                nd.sgd_mom_update(weight, grad, moms[i], out=weight, lr=lr, wd=wd,
                                  momentum=momentum, rescale_grad=rescale)
            else:
                nd.sgd_update(weight, grad, out=weight, lr=lr, wd=wd, rescale_grad=rescale)

    def gradient(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Mean loss gradient over all of (x, y) at ``params`` (FedSGD), as a flat vector.

        Non-trainable entries (batch-norm running statistics) get a zero gradient.
        """
        self.set_flat(params)
        total = np.zeros(self.num_params, dtype=np.float32)
        trainable = {id(p) for p in self._trainable}
        for xb, yb in minibatches(x, y, batch_size, 1, None, None):
            with autograd.record():
                loss = self._net_with_loss(xb, yb)
            loss.backward()
            for param, part in zip(self._params, self.layout):
                if id(param) in trainable:
                    total[part.offset : part.stop] += param.grad().asnumpy().ravel()
        return total / max(len(y), 1)

    # --- DP-SGD (example-level differential privacy, Abadi et al. 2016) --------------------------

    def train_dp(
        self,
        params: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        *,
        lr: float,
        batch_size: int,
        clip: float,
        noise_multiplier: float,
        steps: int,
        seed: int | None = None,
    ) -> TrainResult:
        """DP-SGD from ``params``: ``steps`` Poisson-sampled batches (each example in with rate
        q = batch_size / N), every example's gradient clipped to L2 norm ``clip``, N(0, (σ·clip)²)
        added to each coordinate of the clipped sum, step lr·(sum + noise) / batch_size.

        The expected batch size (not the drawn one) divides, so an example's influence on a step is
        at most lr·clip/batch_size whatever else was sampled — what the accountant assumes.
        ``seed=None`` (what peers use) draws the sampling and the noise from OS entropy: noise from
        a seed others know (the run's seed is public) could be regenerated and subtracted.
        """
        self._check_per_example()
        self.set_flat(params)
        rng = np.random.default_rng(seed)
        if seed is not None:  # tests and benchmarks: reproducible (MXNet's RNG only drives dropout)
            mx.random.seed(seed % (2**31))
        n = len(y)
        rate = min(1.0, batch_size / max(n, 1))
        scale, sd = lr / (rate * n), noise_multiplier * clip
        losses, seen = [], 0
        for _ in range(steps):
            rows = np.flatnonzero(rng.random(n) < rate)
            if rows.size:
                sums, _, loss = self._clipped_sums(nd.array(x[rows], dtype="float32"),
                                                   nd.array(y[rows], dtype="float32"), clip)
                losses.append(loss)
                seen += rows.size
            else:
                sums = [nd.zeros(p.shape) for p in self._trainable]
            # numpy's ziggurat draws the noise ~3x faster than MXNet's sampler; one copy per step
            noise = nd.array(rng.standard_normal(self.num_params, dtype=np.float32)) if sd else None
            for param, total in zip(self._trainable, sums):
                if noise is not None:
                    part = self._slices[param.name]
                    total = total + sd * noise[part.offset : part.stop].reshape(part.shape)
                weight = param.data()
                weight -= scale * total
        total_loss = float(nd.add_n(*losses).asscalar()) if losses else 0.0
        return TrainResult(self.get_flat(), total_loss / max(seen, 1), seen)

    def clipped_gradient_sum(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, clip: float, method: str = "auto"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(Σ_i clip(g_i, C) as a flat vector, per-example gradient norms ||g_i||) at ``params``.

        ``method``: "dense" (the vectorised Dense-layer identity), "loop" (one example at a time,
        any layer) or "auto" (dense when the net allows). Tests compare the two.
        """
        self._check_per_example()
        self.set_flat(params)
        xb, yb = nd.array(x, dtype="float32"), nd.array(y, dtype="float32")
        chain = dense_chain(self.net)
        if method == "loop" or (method == "auto" and chain is None):
            sums, norms = looped_clipped_sums(self.net, self.loss_fn, self._trainable, xb, yb, clip)[:2]
        elif method in ("dense", "auto"):
            if chain is None:
                raise SpecError("the vectorised per-example path needs a net of Dense layers")
            sums, norms = dense_clipped_sums(chain, self.loss_fn, self._trainable, xb, yb, clip)[:2]
        else:
            raise ValueError(f"method must be auto, dense or loop, got {method!r}")
        flat = np.zeros(self.num_params, dtype=np.float32)
        for param, total in zip(self._trainable, sums):
            part = self._slices[param.name]
            flat[part.offset : part.stop] = total.asnumpy().ravel()
        return flat, norms.asnumpy()

    def _check_per_example(self) -> None:
        if any(p.grad_req == "null" for p in self._params):
            raise SpecError("DP-SGD needs per-example gradients: batch norm mixes the examples of a "
                            "batch; use a model without batchnorm layers")

    def _clipped_sums(self, xb: Any, yb: Any, clip: float) -> tuple[list[Any], Any, Any]:
        chain = dense_chain(self.net)
        if chain is not None:
            return dense_clipped_sums(chain, self.loss_fn, self._trainable, xb, yb, clip)
        return looped_clipped_sums(self.net, self.loss_fn, self._trainable, xb, yb, clip)

    def logits(self, params: np.ndarray, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Class scores (N, classes) of ``params`` on ``x``, as float32 numpy (membership audits)."""
        self.set_flat(params)
        parts = [self.net(nd.array(x[i : i + batch_size], dtype="float32")).asnumpy()
                 for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.spec.num_classes), np.float32)

    def evaluate(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> tuple[float, float]:
        """(mean loss, accuracy) of ``params`` on (x, y)."""
        self.set_flat(params)
        losses, hits = [], []
        for xb, yb in minibatches(x, y, batch_size, 1, None, None):
            out = self.net(xb)
            losses.append(self.loss_fn(out, yb).sum())
            hits.append((out.argmax(axis=1) == yb.astype("float32")).sum())
        if not losses:
            return 0.0, 0.0
        count = len(y)
        return float(nd.add_n(*losses).asscalar()) / count, float(nd.add_n(*hits).asscalar()) / count
