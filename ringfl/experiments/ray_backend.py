"""``ringfl experiment --backend ray``: every setting of a grid is a task on an existing Ray cluster.

The only module that imports Ray. What travels is configuration, as plain JSON-able values (Ray
serialises task arguments and results with cloudpickle, so nothing else is handed to it): a task
gets the experiment file as run, the working directory and the setting's key, re-plans the
experiment on its node exactly as a ``--jobs`` worker does, runs the setting through the same
:func:`ringfl.experiments.run.run_setting` entry point and returns its records as dicts; this process
stores them like the local backend (:func:`ringfl.experiments.run.store_result`), one as it finishes.
Every node reads the data source and topology files itself.

With ``--transport tcp`` each ``ringfl peer`` of a setting is a Ray task of its own, spread over
the nodes: the coordinator (or bootstrap) listens on the address of the node its setting runs
on, ring peers on the address of the node each one lands on, and they dial each other over TCP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave the cluster unless asked for

import ray  # noqa: E402
import trio  # noqa: E402
import yaml  # noqa: E402
from ray.exceptions import RayError  # noqa: E402

from ringfl.errors import ConfigError, RingflError  # noqa: E402
from ringfl.experiments import distributed  # noqa: E402
from ringfl.experiments.plan import Experiment, Run, plan  # noqa: E402
from ringfl.experiments.results import PeerRecord, Setting, SettingResult, SettingRound  # noqa: E402
from ringfl.experiments.run import run_setting, store_result  # noqa: E402
from ringfl.experiments.tracking import ProgressBar  # noqa: E402
from ringfl.launch import run_peer_processes  # noqa: E402

RAY_KEYS = ("num_cpus", "peer_num_cpus", "max_retries")


@dataclass(frozen=True)
class RayBackend:
    """Settings as Ray tasks: ``num_cpus`` each (the cluster runs as many at once as its CPUs
    allow), tcp peers ``peer_num_cpus`` each, a task lost with its node retried ``max_retries``
    times on another node (0: the setting fails, the others go on, a re-run finishes it)."""

    address: str | None = None
    num_cpus: float = 1.0
    peer_num_cpus: float = 0.0
    max_retries: int = 0

    @classmethod
    def from_experiment(cls, experiment: Experiment, address: str | None) -> RayBackend:
        """The backend for ``address`` with the experiment file's ``ray:`` options, checked."""
        options = experiment.ray
        unknown = sorted(set(options) - set(RAY_KEYS))
        if unknown:
            raise ConfigError(f"ray: unknown key {unknown[0]!r} (valid: {', '.join(RAY_KEYS)})")
        values = {k: _number(options[k], f"ray.{k}", integer=k == "max_retries") for k in RAY_KEYS if k in options}
        if values.get("num_cpus", 1.0) <= 0:
            raise ConfigError("ray.num_cpus: a setting task needs more than 0 CPUs")
        return cls(address, **values)

    def run(self, experiment: Experiment, out: Path, transport: str, pending: Sequence[Run],
            bar: ProgressBar) -> None:
        if not pending:
            return
        connected = _connect(self.address)
        job = {"source": experiment.source, "cwd": os.getcwd(), "transport": transport,
               "eval_samples": experiment.eval_samples, "audit": experiment.audit, "peer_num_cpus": self.peer_num_cpus}
        task = _setting_task.options(num_cpus=self.num_cpus, max_retries=self.max_retries,
                                     retry_exceptions=False)
        running = {task.remote({**job, "key": run.setting.key, "resolved": run.resolved()}): run for run in pending}
        failed: list[tuple[Run, str]] = []
        try:
            while running:
                [ref], _ = ray.wait(list(running), num_returns=1)
                run = running.pop(ref)
                try:
                    result = from_record(ray.get(ref))
                except RayError as exc:
                    failed.append((run, _reason(exc)))
                    bar.console.print(f"failed {run.setting.label}: {failed[-1][1]}", soft_wrap=True, markup=False)
                    continue
                store_result(out, run, result)
                bar.begin(run)
                bar.advance(run.config.rounds, result.final.accuracy if result.final else None)
                bar.finish(run, result)
        finally:
            _cancel_unfinished(list(running))  # interrupted: stop what still runs (finished ones are stored)
            if connected:
                ray.shutdown()
        if failed:
            raise RingflError(f"{len(failed)} of {len(pending)} settings failed on Ray (first: "
                              f"{failed[0][0].setting.label}: {failed[0][1]}); finished settings are "
                              "kept, re-run to finish the others")


def _cancel_unfinished(refs: list[ray.ObjectRef]) -> None:
    """Cancel only tasks not finished yet: Ray (2.x) can abort the driver when a cancel races the
    reply of a task that is just finishing (ray-project/ray#54798), so finished ones are left alone."""
    if not refs:
        return
    _, unfinished = ray.wait(refs, num_returns=len(refs), timeout=0)
    for ref in unfinished:
        ray.cancel(ref)


def _number(value: Any, where: str, integer: bool) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < 0:
        raise ConfigError(f"{where}: expected a number >= 0{' (whole)' if integer else ''}, got {value!r}")
    return value


def _connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (None: ``RAY_ADDRESS``, else a new one on this machine);
    True when this call connected (and so disconnects at the end)."""
    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address or 'RAY_ADDRESS / a new local one'}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in one line when nothing listens at ``address``: ``ray.init`` would retry for minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local" and other forms Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address}: nothing answers there "
                          f"({exc.strerror or type(exc).__name__}); start it with `ray start --head`") from None


def _reason(exc: RayError) -> str:
    """One line: the setting's own error (its last line), or the first sentence of what Ray says
    happened to its worker or node."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        lines = [line.strip() for line in f"{type(cause).__name__}: {cause}".splitlines() if line.strip()]
        return lines[-1]
    text = " ".join(str(exc).split())
    return text.split(". ", 1)[0] if text else type(exc).__name__


# --- records: plain dicts across the process boundary -----------------------------------------


def to_record(result: SettingResult) -> dict[str, Any]:
    """A setting's result as plain JSON-able values (what a task returns)."""
    return {"params": result.setting.params, "rounds": [dataclasses.asdict(r) for r in result.rounds],
            "peers": [dataclasses.asdict(p) for p in result.peers], "wall_time": result.wall_time,
            "num_peers": result.num_peers, "audit": result.audit}


def from_record(record: Mapping[str, Any]) -> SettingResult:
    return SettingResult(Setting(record["params"]), [SettingRound(**r) for r in record["rounds"]],
                         [PeerRecord(**p) for p in record["peers"]], float(record["wall_time"]),
                         int(record["num_peers"]), audit=record.get("audit"))


# --- on the nodes ------------------------------------------------------------------------------


@ray.remote
def _setting_task(job: dict[str, Any]) -> dict[str, Any]:
    """Run one setting on this node and return its records."""
    run = _planned(job)
    placement = distributed.Placement(host=ray.util.get_node_ip_address(),
                                      start_peers=partial(_ray_peers, num_cpus=job["peer_num_cpus"]))
    token = distributed.PLACEMENT.set(placement)  # through the module: Ray pickles this task's globals
    try:
        with tempfile.TemporaryDirectory(prefix="ringfl-setting-") as scratch:  # tcp: generated topologies
            result = run_setting(run, Path(scratch), transport=job["transport"],
                                 eval_samples=job["eval_samples"], audit=job["audit"])
    finally:
        distributed.PLACEMENT.reset(token)
    return to_record(result)


def _planned(job: Mapping[str, Any]) -> Run:
    """The job's setting, planned here from the experiment file as the driver planned it
    (relative topology paths resolve against the driver's directory when this node has it)."""
    if os.path.isdir(job["cwd"]):
        os.chdir(job["cwd"])
    experiment = plan(yaml.safe_load(job["source"]), where="experiment (on a Ray node)")
    run = next((r for r in experiment.runs if r.setting.key == job["key"]), None)
    if run is None or run.resolved() != job["resolved"]:
        raise RingflError(f"setting {job['key']} resolves differently on node {ray.util.get_node_ip_address()} "
                          "(another ringfl version, or other topology files?)")
    return run


async def _ray_peers(commands: list[list[str]], num_cpus: float) -> None:
    """Start each ``ringfl peer`` command as a Ray task, spread over the nodes; fail when one fails."""
    peer = _peer_task.options(num_cpus=num_cpus, scheduling_strategy="SPREAD", max_retries=0)
    refs = [peer.remote(_peer_job(command)) for command in commands]
    try:
        await trio.to_thread.run_sync(ray.get, refs, abandon_on_cancel=True)
    finally:
        _cancel_unfinished(refs)  # a KeyboardInterrupt (child killed) for peers still running


def _peer_job(command: Sequence[str]) -> dict[str, Any]:
    """A ``python -m ringfl peer ...`` command as plain values: the arguments, and the text of its
    topology file (a generated one exists only on this node)."""
    if list(command[1:3]) != ["-m", "ringfl"]:
        raise RingflError(f"not a ringfl command: {' '.join(command)}")
    argv = list(command[3:])
    job: dict[str, Any] = {"argv": argv}
    if "--topology" in argv:
        path = Path(argv[argv.index("--topology") + 1])
        job.update(topology=path.read_text(), topology_suffix=path.suffix)
    return job


@ray.remote
def _peer_task(job: dict[str, Any]) -> None:
    """One ``ringfl peer`` process on this node; a ring peer listens on this node's address."""
    argv = list(job["argv"])
    with tempfile.TemporaryDirectory(prefix="ringfl-peer-") as scratch:
        if "topology" in job:
            path = Path(scratch) / f"topology{job['topology_suffix']}"
            path.write_text(job["topology"])
            argv[argv.index("--topology") + 1] = str(path)
            argv += ["--listen", f"{ray.util.get_node_ip_address()}:0"]
        command = [sys.executable, "-m", "ringfl", *argv]
        trio.run(partial(run_peer_processes, [command], capture=True))


# --- a cluster on this machine (tests, benchmarks) ------------------------------------------------


class LocalCluster:
    """``nodes`` Ray nodes on this machine, each its own ``ray start --block`` process group
    (a head, then workers joining it), in a private temp dir, so that stopping one (or killing it,
    as a failed node) ends exactly the daemons and workers it started and nothing else."""

    def __init__(self, nodes: int = 2, cpus_per_node: float = 1, object_store_mb: int = 80,
                 env: Mapping[str, str] | None = None) -> None:
        self.nodes, self.cpus, self.store = nodes, cpus_per_node, object_store_mb * 1024 * 1024
        # a throwaway loopback cluster: no token (a driver needs RAY_AUTH_MODE=disabled too)
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", **(env or {})}
        self.temp = tempfile.mkdtemp(prefix="rf-ray-")  # short: Ray's socket paths live under it
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> LocalCluster:
        try:
            self._start(["--head", "--port", str(self.port), "--include-dashboard=false", *_client_server_args()])
            self._wait_for_head(60)
            for _ in range(self.nodes - 1):
                self._start(["--address", self.address])
            self.wait_for_nodes(self.nodes, 90)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self, args: list[str]) -> None:
        ray_cli = Path(sys.executable).with_name("ray")
        command = [str(ray_cli) if ray_cli.exists() else "ray", "start", "--block", *args,
                   "--num-cpus", str(self.cpus), "--object-store-memory", str(self.store),
                   "--temp-dir", self.temp, "--disable-usage-stats"]
        with open(self._log(len(self.processes)), "ab") as log:  # why a node failed to start
            self.processes.append(subprocess.Popen(command, env=self.env, start_new_session=True,
                                                   stdout=log, stderr=subprocess.STDOUT))

    def _log(self, index: int) -> Path:
        return Path(self.temp) / f"ray-start-{index}.log"

    def _wait_for_head(self, timeout: float) -> None:
        """Until the head's GCS port answers; if ``ray start`` exits or the time runs out, an error
        carrying the end of its output."""
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            head = self.processes[0]
            if head.poll() is not None or time.monotonic() > deadline:
                tail = self._log(0).read_text(errors="replace").strip().splitlines()[-5:]
                why = f"ray start exited with {head.returncode}" if head.returncode is not None else \
                    f"no answer within {timeout:.0f} s"
                raise RuntimeError(f"the Ray head did not listen on port {self.port} ({why}): " + " | ".join(tail))
            time.sleep(0.2)

    def alive_nodes(self) -> int:
        """Nodes the cluster's GCS counts alive (asked in a child process: no driver here)."""
        code = (f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); "
                "print(sum(n['Alive'] for n in ray.nodes()))")
        try:
            done = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                                  timeout=60, check=False)
        except subprocess.TimeoutExpired:
            return 0
        lines = done.stdout.split()
        return int(lines[-1]) if done.returncode == 0 and lines and lines[-1].isdigit() else 0

    def wait_for_nodes(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_nodes() != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local Ray cluster did not reach {count} alive nodes in {timeout:.0f} s")
            time.sleep(0.5)

    def kill_node(self, index: int) -> None:
        """SIGKILL node ``index`` and every process it started: a node failing, not shutting down."""
        _kill_tree(self.processes[index], signal.SIGKILL)

    def stop(self) -> None:
        for process in reversed(self.processes):  # workers first, then the head
            _kill_tree(process, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            _kill_tree(process, signal.SIGKILL)  # whatever did not stop in time
            process.wait()
        self.processes.clear()
        shutil.rmtree(self.temp, ignore_errors=True)


def _kill_tree(process: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the node's process group (start_new_session: its id is the leader's pid) and every
    descendant by pid: Ray's worker processes put themselves in groups of their own."""
    pids = _descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _descendants(root: int) -> list[int]:
    """Pids below ``root`` in the process tree (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _client_server_args() -> list[str]:
    """A free port for the Ray Client server when ``ray[client]`` (grpc) is installed, so two local
    clusters never race for its default port; minimal Ray refuses the flag and starts no such server."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        return []
    return ["--ray-client-server-port", str(_free_port())]


__all__ = ["RAY_KEYS", "LocalCluster", "RayBackend", "from_record", "to_record"]
