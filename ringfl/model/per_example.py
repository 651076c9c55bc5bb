"""Clipped per-example gradient sums for DP-SGD (MXNet thread only).

Each function returns (Σ_i clip(g_i, C) per trainable parameter, per-example norms ||g_i||, the
summed loss) as NDArrays, for :meth:`~ringfl.model.gluon.GluonModel.train_dp`. A net of Dense
layers takes the vectorised path; anything else the exact one-example-at-a-time loop.
"""

from __future__ import annotations

from typing import Any

from mxnet import autograd, gluon, nd
from mxnet.gluon import nn


def dense_chain(net: gluon.HybridBlock) -> list[Any] | None:
    """The net's blocks when every block with parameters is a Dense layer, else None."""
    if not isinstance(net, nn.HybridSequential):
        return None
    blocks = list(net._children.values())
    for block in blocks:
        if not isinstance(block, nn.Dense) and block.collect_params():
            return None
    return blocks


def dense_clipped_sums(chain: list[Any], loss_fn: gluon.loss.Loss, trainable: list[Any],
                       xb: Any, yb: Any, clip: float) -> tuple[list[Any], Any, Any]:
    """Clipped per-example gradient sums of a Dense-only net from one forward and one backward.

    A zero "probe" e_l is added to each pre-activation z_l, so the backward of the summed loss
    leaves δ_l[i] = ∂L_i/∂z_l[i] in e_l.grad for every example i. Example i's weight gradient
    is the outer product δ_l[i] a_l[i]ᵀ, with squared norm ||a_l[i]||²·||δ_l[i]||² (plus
    ||δ_l[i]||² for the bias), and the clipped sum is (c ⊙ δ_l)ᵀ a_l with
    c_i = min(1, C/||g_i||) — exact, with no per-example loop and no per-example gradient stored.
    """
    probes: list[tuple[Any, Any, Any]] = []
    with autograd.record():
        h = xb
        for block in chain:
            if not isinstance(block, nn.Dense):
                h = block(h)
                continue
            a = h.reshape((0, -1))
            probe = nd.zeros((a.shape[0], block._units))
            probe.attach_grad()
            bias = block.bias.data().detach() if block.bias is not None else None
            z = nd.FullyConnected(a, block.weight.data().detach(), bias, no_bias=bias is None,
                                  num_hidden=block._units) + probe
            probes.append((block, a, probe))
            h = block.act(z) if block.act is not None else z
        loss = loss_fn(h, yb)
    loss.backward()
    squares = nd.zeros(xb.shape[0])
    for block, a, probe in probes:
        d2 = nd.sum(nd.square(probe.grad), axis=1)
        squares = squares + nd.sum(nd.square(a), axis=1) * d2 + (d2 if block.bias is not None else 0)
    norms = nd.sqrt(squares)
    factor = (clip / nd.maximum(norms, clip)).reshape((-1, 1))
    sums: dict[str, Any] = {}
    for block, a, probe in probes:
        scaled = probe.grad * factor
        sums[block.weight.name] = nd.dot(scaled, a, transpose_a=True)
        if block.bias is not None:
            sums[block.bias.name] = nd.sum(scaled, axis=0)
    return [sums[p.name] for p in trainable], norms, loss.sum()


def looped_clipped_sums(net: gluon.HybridBlock, loss_fn: gluon.loss.Loss, trainable: list[Any],
                        xb: Any, yb: Any, clip: float) -> tuple[list[Any], Any, Any]:
    """The exact fallback for any layer (conv, recurrent, custom): one backward per example."""
    sums = [nd.zeros(p.shape) for p in trainable]
    norms, losses = [], []
    for i in range(xb.shape[0]):
        with autograd.record():
            loss = loss_fn(net(xb[i : i + 1]), yb[i : i + 1])
        loss.backward()
        grads = [p.grad() for p in trainable]
        norm = nd.sqrt(nd.add_n(*[nd.sum(nd.square(g)) for g in grads]))
        factor = clip / nd.maximum(norm, clip)
        for total, grad in zip(sums, grads):
            total += grad * factor
        norms.append(norm)
        losses.append(loss.sum())
    return sums, nd.concat(*norms, dim=0), nd.add_n(*losses)
