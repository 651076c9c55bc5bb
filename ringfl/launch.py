"""Start ringfl peers as separate OS processes (demo, TCP experiments, end-to-end tests).

Each peer is ``python -m ringfl peer ...``: its own interpreter, its own MXNet thread, real TCP
on loopback — exactly what a user runs on several machines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio


def child_env(processes: int) -> dict[str, str]:
    """Environment for ``processes`` MXNet processes started side by side on this machine.

    One OpenMP thread each, and (for more than one process) MXNet's NaiveEngine: ringfl already
    runs all MXNet work of a process on one thread, so the threaded engine's worker only adds a
    hand-off per operator, which is pure overhead once the processes outnumber the cores (measured
    on 2 cores, 10 peers: a FedAvg round 1.16 s threaded, 0.85 s naive). Values the user set win.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    if processes > 1:
        env.setdefault("MXNET_ENGINE_TYPE", "NaiveEngine")
    return env


def peer_command(coordinator: str, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ringfl", "peer", "--coordinator", coordinator, "--name", name,
            "--quiet", *extra]


async def run_peer_processes(commands: Sequence[Sequence[str]], *, check: bool = True,
                             capture: bool = False) -> list[subprocess.CompletedProcess[bytes]]:
    """Run the commands concurrently; raise if any fails (when ``check``)."""
    results: list[subprocess.CompletedProcess[bytes] | None] = [None] * len(commands)
    env = child_env(len(commands))

    async def one(i: int, command: Sequence[str]) -> None:
        results[i] = await trio.run_process(list(command), check=False, env=env,
                                            capture_stdout=capture, capture_stderr=capture)

    async with trio.open_nursery() as nursery:
        for i, command in enumerate(commands):
            nursery.start_soon(one, i, command)
    done = [r for r in results if r is not None]
    failed = [r for r in done if r.returncode != 0]
    if check and failed:
        err = (failed[0].stderr or b"").decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{len(failed)} peer process(es) failed; first: exit {failed[0].returncode}"
                           + (f": {err[-1]}" if err else ""))
    return done


async def serve_until_done(server: Any, clients: Callable[[str], Awaitable[Any]]) -> dict[str, Any]:
    """Run ``server`` (a coordinator or bootstrap) until its rounds are done, with
    ``clients(address)`` beside it once it listens; returns the server's summary."""
    summary: dict[str, Any] = {}

    async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        summary.update(await server.run(task_status=task_status))

    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve)
        await clients(address)
    return summary
