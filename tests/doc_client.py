"""A coordinator-mode client written from docs/protocol.md alone.

Only the standard library, numpy and msgpack: no ringfl import. Every constant below is copied
from the document (section numbers in the comments), so a run of this client against a real
coordinator (tests/test_doc_client.py) checks that the document is enough to write a client.
It trains the spec's dense layers with plain numpy SGD.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
from typing import Any

import msgpack
import numpy as np

VERSION = 1  # §3.1
JOIN, PARAMS_REQUEST, SPEC_CONFIRM, UPLOAD = 1001, 1002, 1003, 1004  # §5
ACCEPT, REJECT, SPEC_REPLY, PARAMS, ACK = 1005, 1006, 1007, 1008, 1009
NEIGHBOURS, ROUND_START, END_OF_RUN, PEER_REPORT, HEARTBEAT, GOODBYE, ERROR = range(1010, 1017)
ALIGN = 8  # §2: every buffer starts at a multiple of 8
HANDSHAKE_MAX_FRAME = 1 << 20  # §8: 1 MiB before the model size is known


def max_frame(num_params: int) -> int:
    """§8: default_max_frame(num_params)."""
    return int(1.1 * 4 * num_params) + 65_536


class DocClient:
    """One session with a coordinator (§1: we are the client)."""

    def __init__(self, address: str, name: str, timeout: float = 120.0) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.name = name
        self.run_id = ""  # §3.1: adopt the first non-empty run_id received
        self.seq = 0
        self.limit = HANDSHAKE_MAX_FRAME

    # --- frames (§2, §3, §6) --------------------------------------------------------------

    def send(self, code: int, fields: dict[str, Any], buffers: list[np.ndarray] = ()) -> None:
        self.seq += 1
        header = {"version": VERSION, "run_id": self.run_id, "sender": self.name,
                  "round": int(fields.pop("round", 0)), "seq": self.seq, **fields}
        if buffers:
            header["buffers"] = [[str(b.dtype), int(b.size)] for b in buffers]
        packed = msgpack.packb(header, use_bin_type=True)
        body = bytearray(struct.pack(">I", len(packed)) + packed)
        for buffer in buffers:
            body += bytes(-(8 + len(body)) % ALIGN)  # offsets count from the frame's first byte
            body += np.ascontiguousarray(buffer).astype(buffer.dtype.newbyteorder("<")).tobytes()
        self.sock.sendall(struct.pack(">II", code, len(body)) + body)

    def _read(self, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        return bytes(data)

    def receive(self) -> tuple[int, dict[str, Any], list[np.ndarray]]:
        code, length = struct.unpack(">II", self._read(8))
        if not 4 <= length <= self.limit:
            raise ValueError(f"frame length {length} outside [4, {self.limit}]")
        body = self._read(length)
        (header_len,) = struct.unpack(">I", body[:4])
        header = msgpack.unpackb(body[4:4 + header_len], raw=False)
        offset, buffers = 12 + header_len, []  # frame offsets
        for dtype, count in header.get("buffers", []):
            offset += -offset % ALIGN
            item = np.dtype(dtype).newbyteorder("<")
            buffers.append(np.frombuffer(body, item, count, offset - 8).astype(dtype))
            offset += item.itemsize * count
        if header["run_id"] and not self.run_id:
            self.run_id = header["run_id"]
        if code == ERROR:
            raise RuntimeError(f"server error {header['code']}: {header['detail']}")
        return code, header, buffers

    def expect(self, *codes: int) -> tuple[int, dict[str, Any], list[np.ndarray]]:
        """The next message with one of ``codes``; heartbeats (§5: liveness) are skipped."""
        while True:
            code, header, buffers = self.receive()
            if code in codes:
                return code, header, buffers
            if code != HEARTBEAT:
                raise RuntimeError(f"expected one of {codes}, got {code}")

    @staticmethod
    def vector(field: dict[str, Any], buffers: list[np.ndarray]) -> np.ndarray:
        """§6: dense, indices or bitmap, as a dense float32 vector."""
        size = field["size"]
        if field["encoding"] == "dense":
            return buffers[0].astype(np.float32)
        out = np.zeros(size, np.float32)
        if field["encoding"] == "indices":
            out[buffers[0]] = buffers[1]
        else:
            bits = np.unpackbits(buffers[0], bitorder="little")[:size].astype(bool)
            out[bits] = buffers[1]
        return out

    # --- the session (§7, §12) --------------------------------------------------------------

    def join(self, num_samples: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """1001 → 1005, 1003 ("" asks for the spec) → 1007; returns (spec, Accept.info)."""
        self.send(JOIN, {"address": "", "num_samples": num_samples, "info": {}})
        code, accept, _ = self.expect(ACCEPT, REJECT)
        if code == REJECT:
            raise RuntimeError(f"join rejected: {accept['detail']}")
        self.limit = max_frame(accept["num_params"])
        self.send(SPEC_CONFIRM, {"spec_hash": ""})
        _, reply, _ = self.expect(SPEC_REPLY)
        spec_json = reply["spec_json"]
        if hashlib.sha256(spec_json.encode("utf-8")).hexdigest() != accept["spec_hash"]:
            raise RuntimeError("the spec does not hash to the announced spec_hash")
        spec = json.loads(spec_json)
        canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        assert canonical == spec_json, "§12.1: the 1007 carries the canonical JSON"
        self.send(SPEC_CONFIRM, {"spec_hash": accept["spec_hash"]})  # §7: re-confirmation is answered
        _, again, _ = self.expect(SPEC_REPLY)
        assert again["ok"] and again["spec_json"] == ""
        return spec, accept["info"]

    def close(self) -> None:
        self.sock.close()


def layout(spec: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """§12.2: the flat vector, dense layers only: (units, fan_in) weight row-major, then bias."""
    width = int(np.prod(spec["input_shape"]))
    parts = []
    for layer in spec["layers"]:
        assert layer["type"] == "dense", "this client trains dense layers only"
        parts += [("weight", (layer["units"], width)), ("bias", (layer["units"],))]
        width = layer["units"]
    return parts


def unflatten(vector: np.ndarray, shapes: list[tuple[str, tuple[int, ...]]]) -> list[np.ndarray]:
    arrays, offset = [], 0
    for _, shape in shapes:
        size = int(np.prod(shape))
        arrays.append(vector[offset:offset + size].reshape(shape).copy())
        offset += size
    assert offset == vector.size
    return arrays


def sgd_epochs(spec: dict[str, Any], params: list[np.ndarray], x: np.ndarray, y: np.ndarray,
               training: dict[str, Any], rng: np.random.Generator) -> list[np.ndarray]:
    """Softmax cross-entropy SGD over an MLP (relu where the spec says so)."""
    layers = spec["layers"]
    lr, batch = float(training["lr"]), int(training["batch_size"])
    for _ in range(int(training["epochs"])):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch):
            rows = order[start:start + batch]
            activations, h = [x[rows]], x[rows]
            for i, layer in enumerate(layers):
                h = h @ params[2 * i].T + params[2 * i + 1]
                if layer.get("activation") == "relu":
                    h = np.maximum(h, 0)
                activations.append(h)
            p = np.exp(h - h.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            grad = p
            grad[np.arange(len(rows)), y[rows]] -= 1
            grad /= len(rows)
            for i in reversed(range(len(layers))):
                weight_grad, bias_grad = grad.T @ activations[i], grad.sum(axis=0)
                if i:  # back through layer i's weight (before its step) and layer i-1's relu
                    grad = grad @ params[2 * i]
                    if layers[i - 1].get("activation") == "relu":
                        grad = grad * (activations[i] > 0)
                params[2 * i] -= lr * weight_grad
                params[2 * i + 1] -= lr * bias_grad
    return params


def take_part(address: str, name: str, x: np.ndarray, y: np.ndarray) -> list[dict[str, Any]]:
    """A whole run: join, ready report, then per round start 1002 → 1008, train, 1004 → 1009,
    report; until end of run. Returns this client's per-round records."""
    client = DocClient(address, name)
    try:
        spec, info = client.join(len(y))
        shapes = layout(spec)
        client.send(PEER_REPORT, {"metrics": {"ready": True, "num_samples": len(y)}})  # §12.4
        rng = np.random.default_rng(info["index"])
        records = []
        while True:
            code, message, _ = client.expect(ROUND_START, END_OF_RUN)
            if code == END_OF_RUN:
                break
            if not message["selected"]:
                continue
            round_ = message["round"]
            client.send(PARAMS_REQUEST, {"round": round_, "fraction": 1.0})
            _, params_msg, buffers = client.expect(PARAMS)
            start = client.vector(params_msg["vector"], buffers)
            trained = sgd_epochs(spec, unflatten(start, shapes), x, y, info["training"], rng)
            delta = (np.concatenate([p.ravel() for p in trained]) - start).astype(np.float32)
            client.send(UPLOAD, {"round": round_, "vector": {"encoding": "dense", "size": int(delta.size)},
                                 "num_samples": len(y), "base_version": params_msg["model_version"],
                                 "kind": "delta", "info": {}}, [delta])
            _, ack, _ = client.expect(ACK)
            records.append({"round": round_, "accepted": ack["accepted"], "reason": ack["reason"]})
            client.send(PEER_REPORT, {"round": round_, "metrics": {"round": round_ + 1}})
        client.send(GOODBYE, {"reason": "done"})  # §12.5
        return records
    finally:
        client.close()
