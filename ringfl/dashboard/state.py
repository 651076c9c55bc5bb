"""What the run view shows, read from a running coordinator or ring bootstrap.

The dashboard never changes the run: it reads the objects the server keeps anyway (its
:class:`~ringfl.runtime.records.RoundRecorder`, joined sessions, the
:class:`~ringfl.runtime.pool.GradientPool` with the privacy ledgers, the live topology) and remembers
every peer it has seen, so a peer whose connection ended is still listed — marked dead.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ringfl.runtime.pool import GradientPool
from ringfl.runtime.records import RoundRecord
from ringfl.topology import relink_without


def _number(value: Any) -> float | None:
    """JSON has no NaN: an unevaluated round is null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class RunView:
    """Snapshots of one run for the dashboard (``server``: a Coordinator or a Bootstrap)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.peers: dict[str, dict[str, Any]] = {}  # every peer ever seen, by name

    def snapshot(self) -> dict[str, Any]:
        server = self.server
        config = server.config
        history = [self._round(r) for r in server.recorder.records]
        return {
            "mode": server.mode, "run_id": config.run_id, "algorithm": config.algorithm,
            "model": server.spec.name, "num_params": server.num_params,
            "rounds": config.rounds, "round": history[-1]["round"] if history else 0,
            "running": bool(server.running), "time": time.time(),
            "history": history, "peers": self._peers(), "topology": self._topology(),
            "pool": self._pool(),
        }

    @staticmethod
    def _round(record: RoundRecord) -> dict[str, Any]:
        fields = record.fields
        row = {key: _number(fields[key]) for key in ("min_accuracy", "max_accuracy", "epsilon_spent") if key in fields}
        return {"round": record.round, "accuracy": _number(record.accuracy), "loss": _number(record.loss), **row,
                "rejected": fields.get("rejected")}

    def _peers(self) -> list[dict[str, Any]]:
        server = self.server
        pool: GradientPool | None = getattr(server, "pool", None)  # ring mode: none
        ledgers = pool.ledgers if pool is not None else {}
        selected = getattr(server, "selected", set())
        for name, row in self.peers.items():
            if name not in server.sessions:
                row["state"] = "dead" if server.running else "left"
        for session in server.sessions.values():
            report = session.last_report
            state = "training" if session.peer_id in selected else ("ready" if session.ready else "joining")
            ledger = ledgers.get(session.peer_id)
            epsilon = ledger.total if ledger is not None else report.get("epsilon")
            self.peers[session.peer_id] = {
                "name": session.peer_id, "index": session.index, "state": state if session.alive else "dead",
                "last_seen": session.last_seen, "round": int(report.get("round", session.rounds_done) or 0),
                **self._traffic(session),
                "epsilon": _number(epsilon), "rejected": dict(session.rejected),
                "address": session.address,
            }
        return [dict(row) for row in sorted(self.peers.values(), key=lambda row: (row["index"], row["name"]))]

    def _traffic(self, session: Any) -> dict[str, int]:
        """Bytes the peer sent and received: with the coordinator (coordinator mode), or with
        its neighbours as it last reported them (ring mode: the bootstrap sees no gradients)."""
        if self.server.mode == "ring":
            report = session.last_report
            return {"bytes_sent": int(report.get("bytes_sent", 0)), "bytes_received": int(report.get("bytes_received", 0))}
        return {"bytes_sent": session.stream.bytes_received, "bytes_received": session.stream.bytes_sent}

    def _topology(self) -> dict[str, Any]:
        """Ring mode: the topology file with dead nodes and the bridging links; else a star."""
        server = self.server
        topology = getattr(server, "topology", None)
        if topology is None:
            names = [row["name"] for row in sorted(self.peers.values(), key=lambda r: r["index"])]
            dead = [row["name"] for row in self.peers.values() if row["state"] in ("dead", "left")]
            return {"kind": "star", "center": "coordinator", "nodes": names, "dead": dead,
                    "edges": [["coordinator", name] for name in names], "relinked": [], "directed": False}
        labels = list(topology.labels)
        edges = {(labels[a], labels[b]) for a, b in topology.graph.edges}
        live = relink_without(topology, server.dead) if server.dead else topology
        live_edges = {(live.labels[a], live.labels[b]) for a, b in live.graph.edges}
        known = edges | ({(b, a) for a, b in edges} if not topology.directed else set())
        return {"kind": "graph", "name": topology.name, "nodes": labels, "directed": topology.directed,
                "dead": sorted(labels[i] for i in server.dead), "edges": sorted(map(list, edges)),
                "relinked": sorted(list(e) for e in live_edges - known)}

    def _pool(self) -> dict[str, Any] | None:
        pool: GradientPool | None = getattr(self.server, "pool", None)
        if pool is None:
            return None  # ring mode: no gradient pool
        stats = pool.stats
        return {"depth": pool.depth(), "capacity": self.server.config.pool_size, "peak": stats.peak_depth,
                "submitted": stats.submitted, "applied": stats.applied, "rejected": stats.rejected,
                "reasons": dict(stats.reasons)}
