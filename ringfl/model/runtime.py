"""The one MXNet thread of a process, awaited from trio.

MXNet is not thread-safe and its calls block, so all of a process's MXNet work runs on a single
dedicated worker thread; trio tasks submit closures and await them without blocking the event
loop. Work is serialised, which is also what bounds training concurrency when hundreds of
in-process peers share one network object.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import trio

from ringfl.model.spec import ModelSpec

T = TypeVar("T")


class MXNetThread:
    """A single worker thread; ``await run(fn, *args)`` executes ``fn`` there."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mxnet")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        future = self._executor.submit(functools.partial(fn, *args, **kwargs))
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()
        future.add_done_callback(lambda _: _wake(token, done))
        await done.wait()  # the work itself cannot be cancelled once started; its result is kept
        return future.result()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Synchronous variant for code outside trio (benchmarks, CLI helpers)."""
        return self._executor.submit(functools.partial(fn, *args, **kwargs)).result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


def _wake(token: trio.lowlevel.TrioToken, done: trio.Event) -> None:
    """Tell the awaiting task; if its trio run was cancelled and has ended meanwhile, nobody waits."""
    with contextlib.suppress(trio.RunFinishedError):
        token.run_sync_soon(done.set)


_shared: MXNetThread | None = None
_shared_lock = threading.Lock()


def mxnet_thread() -> MXNetThread:
    """The process-wide MXNet thread (created on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = MXNetThread()
        return _shared


class Model:
    """A spec's Gluon model behind the MXNet thread: async flat-vector training and evaluation.

    All peers of a process that use the same spec share one instance (see :func:`shared_model`).
    """

    def __init__(self, spec: ModelSpec, thread: MXNetThread | None = None) -> None:
        self.spec = spec
        self.thread = thread or mxnet_thread()
        self._gluon = self.thread.call(_build, spec)
        self.num_params: int = self._gluon.num_params
        self.layout = self._gluon.layout

    def init_params(self, seed: int) -> np.ndarray:
        return self._gluon.init_params(seed)

    async def train(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, **kw: Any) -> Any:
        return await self.thread.run(self._gluon.train, params, x, y, **kw)

    async def train_dp(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, **kw: Any) -> Any:
        return await self.thread.run(self._gluon.train_dp, params, x, y, **kw)
    async def train_steps(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, **kw: Any) -> Any:
        return await self.thread.run(self._gluon.train_steps, params, x, y, **kw)

    async def gradient(self, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return await self.thread.run(self._gluon.gradient, params, x, y)

    async def evaluate(self, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        return await self.thread.run(self._gluon.evaluate, params, x, y)

    def train_sync(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, **kw: Any) -> Any:
        return self.thread.call(self._gluon.train, params, x, y, **kw)

    def logits_sync(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.thread.call(self._gluon.logits, params, x)

    def train_dp_sync(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, **kw: Any) -> Any:
        return self.thread.call(self._gluon.train_dp, params, x, y, **kw)

    def evaluate_sync(self, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        return self.thread.call(self._gluon.evaluate, params, x, y)


def _build(spec: ModelSpec) -> Any:
    from ringfl.model.gluon import GluonModel  # MXNet is imported only here, on first use

    return GluonModel(spec)


_models: dict[str, Model] = {}


def shared_model(spec: ModelSpec) -> Model:
    """One :class:`Model` per spec hash per process, so in-process peers share the network."""
    model = _models.get(spec.hash)
    if model is None:
        model = _models[spec.hash] = Model(spec)
    return model
