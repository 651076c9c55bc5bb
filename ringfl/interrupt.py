"""Ctrl-C and SIGTERM as a clean stop instead of a traceback.

trio delivers Ctrl-C as a ``KeyboardInterrupt`` raised wherever the main task happens to be,
which surfaces wrapped in exception groups. Here both signals instead cancel the work: every
``finally`` runs (connections close, the write-ahead log is already on disk), and the caller
gets one :class:`Interrupted` it can turn into a summary, one line and an exit status.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run was stopped by a signal; ``exit_status`` is the shell's 128 + signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.name}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # SIGINT 130, SIGTERM 143


async def until_signal(work: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``await work(*args)``, cancelled by SIGINT or SIGTERM (then :class:`Interrupted`)."""
    result: list[T] = []
    received: list[int] = []

    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            with trio.open_signal_receiver(*SIGNALS) as signals:
                async for signum in signals:
                    received.append(signum)
                    nursery.cancel_scope.cancel()
                    return

        async def run() -> None:
            result.append(await work(*args))
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        nursery.start_soon(run)
    if received:
        raise Interrupted(received[0])
    return result[0]
