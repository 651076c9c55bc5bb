"""Fuzz the sans-IO frame decoder with random and mutated frames.

Valid frames of every message type (from :func:`ringfl.protocol.encode`) are mutated at the byte
level (flips, truncation, extension, splices, code/length/header_len rewrites, NaN floats,
padding) and at the msgpack level (missing/unknown/duplicate keys, wrong value types, bin/ext,
deep nesting, hostile ``buffers`` and vector descriptions), then fed to :func:`decode`, to a
:class:`FrameDecoder` in random chunks, or to a :class:`Connection`; where the checkout supports
run tokens, tagged frames of a live authenticated session are tampered with too. Decoding may
raise only ``RemoteProtocolError``; anything else is a crash. Frames that do decode are re-encoded
and decoded again (the encoder must accept what the decoder accepts). A separate check feeds
allocation bombs (a frame head claiming 2 GiB, huge header/array/buffer counts) under tracemalloc.

Usage: ``python scripts/fuzz_codec.py [--count 100000] [--seconds 600] [--seed 0]``.
Prints one JSON record; exits 1 on any crash, round-trip mismatch or allocation failure.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import random
import re
import struct
import sys
import time
import traceback
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from ringfl.protocol import (
    EOF,
    MESSAGE_TYPES,
    NEED_DATA,
    Accept,
    Ack,
    Connection,
    EndOfRun,
    Error,
    FrameDecoder,
    Goodbye,
    Heartbeat,
    JoinRequest,
    Limits,
    Message,
    Neighbour,
    Neighbours,
    Params,
    ParamsRequest,
    PeerReport,
    Reject,
    RemoteProtocolError,
    Role,
    RoundStart,
    SpecConfirm,
    SpecReply,
    Upload,
    decode,
    encode,
)
from ringfl.protocol.secagg_messages import (
    SECAGG_KEY_SIZE,
    SECAGG_SEALED_SIZE,
    SECAGG_SHARE_SIZE,
    SecAggInbox,
    SecAggKeys,
    SecAggMasked,
    SecAggRoster,
    SecAggShares,
    SecAggUnmask,
    SecAggUnmaskRequest,
)
from ringfl.vectors import SparseVector

FRAME_HEAD = struct.Struct(">II")
U32 = struct.Struct(">I")
CODES = sorted(MESSAGE_TYPES)
LIMIT_CHOICES = (
    Limits(),
    Limits(max_frame=4096, max_header=1024, max_items=8, max_vector_size=64),
    Limits(allow_nonfinite=True),
)
ALLOC_PEAK_LIMIT = 64 << 10  # bytes tracemalloc may see while rejecting an allocation bomb


# --- valid messages ---------------------------------------------------------------------------


def _text(rng: random.Random) -> str:
    return rng.choice(["", "p1", "coordinator", "run-1", "ü→λ", "x" * rng.randint(0, 40)])


def _metadata(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    makers: list[Callable[[], Any]] = [
        lambda: None,
        lambda: rng.random() < 0.5,
        lambda: rng.randint(-(2**63), 2**64 - 1),
        lambda: rng.choice([0.5, -1e300, math.nan, math.inf]),
        lambda: _text(rng),
        lambda: [rng.randint(0, 9) for _ in range(rng.randint(0, 3))],
        lambda: [_metadata(rng, depth + 1)],
        lambda: _metadata(rng, depth + 1),
    ]
    usable = makers if depth < 3 else makers[:6]
    return {f"k{i}": rng.choice(usable)() for i in range(rng.randint(0, 4))}


def _dense(rng: random.Random, size: int) -> np.ndarray:
    return np.asarray([rng.gauss(0, 1) for _ in range(size)], dtype=np.float32)


def _sparse(rng: random.Random) -> SparseVector:
    size = rng.choice([0, 1, 7, 8, 9, 33, 64, 200])
    nnz = rng.randint(0, size)
    return SparseVector.from_indices(size, rng.sample(range(size), nnz), _dense(rng, nnz))


def _vector(rng: random.Random) -> np.ndarray | SparseVector:
    return _dense(rng, rng.choice([0, 1, 3, 16, 50])) if rng.random() < 0.4 else _sparse(rng)


def _gossip_header(rng: random.Random) -> dict[str, Any]:
    """A valid ``info`` of a gossip upload (the codec checks it: ringfl.protocol.payloads)."""
    header = {"origin": _text(rng) or "p", "step": rng.randint(0, 3), "hop": rng.randint(1, 3), "weight": rng.random()}
    return {**header, "snapshot": True} if rng.random() < 0.2 else header


def sample_message(rng: random.Random, cls: type[Message]) -> Message:
    """A valid message of type ``cls`` with randomised fields."""
    envelope = dict(
        run_id=_text(rng), sender=_text(rng), round=rng.randint(0, 50), seq=rng.randint(0, 2**40)
    )
    builders: dict[type[Message], Callable[[], dict[str, Any]]] = {
        JoinRequest: lambda: dict(address=_text(rng), num_samples=rng.randint(0, 10**6),
                                  info=_metadata(rng)),
        ParamsRequest: lambda: dict(fraction=rng.choice([1.0, 0.1, 1e-9])),
        SpecConfirm: lambda: dict(spec_hash=_text(rng)),
        Upload: lambda: dict(vector=_vector(rng), num_samples=rng.randint(0, 600),
                             base_version=rng.randint(0, 9),
                             **rng.choice([dict(kind="delta", info=_metadata(rng)),
                                           dict(kind="gossip", info=_gossip_header(rng))])),
        Accept: lambda: dict(num_params=rng.randint(0, 10**6), spec_hash=_text(rng),
                             mode=rng.choice(["coordinator", "ring"]), info=_metadata(rng)),
        Reject: lambda: dict(reason=rng.randint(0, 7), detail=_text(rng)),
        SpecReply: lambda: rng.choice([dict(ok=True, spec_hash="h"),
                                       dict(ok=False, spec_hash="h", spec_json='{"a": 1}')]),
        Params: lambda: dict(vector=_vector(rng), model_version=rng.randint(0, 9)),
        Ack: lambda: rng.choice([dict(accepted=True, ack_seq=rng.randint(0, 99)),
                                 dict(accepted=False, reason=rng.randint(1, 7), detail="no")]),
        Neighbours: lambda: dict(
            neighbours=tuple(Neighbour(_text(rng), f"127.0.0.1:{7000 + i}", rng.random())
                             for i in range(rng.randint(0, 3))),
            topology_version=rng.randint(0, 5), info=_metadata(rng)),
        RoundStart: lambda: dict(deadline=rng.choice([0.0, 2.5]), selected=rng.random() < 0.5,
                                 info=_metadata(rng)),
        EndOfRun: lambda: dict(reason=_text(rng)),
        PeerReport: lambda: dict(metrics=_metadata(rng)),
        Heartbeat: lambda: {},
        Goodbye: lambda: dict(reason=_text(rng)),
        Error: lambda: dict(code=rng.randint(1, 7), detail=_text(rng)),
        **_secagg_builders(rng),
    }
    return cls(**envelope, **builders[cls]())


def _blob(rng: random.Random, size: int) -> np.ndarray:
    return np.frombuffer(bytes(rng.getrandbits(8) for _ in range(size)), dtype=np.uint8)


def _ids(rng: random.Random) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_text(rng) for _ in range(rng.randint(0, 4))))


def _secagg_builders(rng: random.Random) -> dict[type[Message], Callable[[], dict[str, Any]]]:
    """The secure-aggregation messages (fixed-size blobs per listed peer)."""
    def roster() -> dict[str, Any]:
        peers = _ids(rng) or ("p",)
        return dict(peers=peers, points=np.arange(1, len(peers) + 1, dtype=np.uint32),
                    keys=_blob(rng, 2 * SECAGG_KEY_SIZE * len(peers)), threshold=rng.randint(1, len(peers)))

    def sealed(key: str) -> dict[str, Any]:
        ids = _ids(rng)
        return {key: ids, "sealed": _blob(rng, SECAGG_SEALED_SIZE * len(ids))}

    def unmask() -> dict[str, Any]:
        ids = _ids(rng)
        return dict(peers=ids, shares=_blob(rng, SECAGG_SHARE_SIZE * len(ids)))

    return {
        SecAggKeys: lambda: {k: _blob(rng, SECAGG_KEY_SIZE) for k in ("c_pk", "s_pk", "b_commit")},
        SecAggRoster: roster,
        SecAggShares: lambda: sealed("recipients"),
        SecAggInbox: lambda: sealed("senders"),
        SecAggMasked: lambda: dict(masked=np.asarray([rng.getrandbits(32) for _ in range(rng.choice([0, 3, 50]))],
                                                     dtype=np.uint32), num_samples=rng.randint(0, 600)),
        SecAggUnmaskRequest: lambda: (lambda ids: dict(survivors=ids[::2], dropped=ids[1::2]))(_ids(rng)),
        SecAggUnmask: unmask,
    }


def build_corpus(rng: random.Random, per_type: int = 12) -> list[bytes]:
    """``per_type`` valid frames of every message type."""
    return [
        encode(sample_message(rng, cls))
        for cls in MESSAGE_TYPES.values()
        for _ in range(per_type)
    ]


# --- frame surgery ----------------------------------------------------------------------------


@dataclass
class Parts:
    """A valid frame taken apart: code, msgpack header object and raw buffer bytes."""

    code: int
    header: dict[str, Any]
    buffers: list[bytes] = field(default_factory=list)


def split_frame(frame: bytes) -> Parts:
    """Inverse of the encoder for a *valid* frame."""
    code, _ = FRAME_HEAD.unpack_from(frame)
    (header_len,) = U32.unpack_from(frame, 8)
    header = msgpack.unpackb(frame[12 : 12 + header_len], raw=False)
    pos = 12 + header_len
    buffers = []
    sizes = {"float32": 4, "uint32": 4, "uint8": 1}
    for dtype, count in header.get("buffers", []):
        pos += -pos % 8
        buffers.append(frame[pos : pos + count * sizes[dtype]])
        pos += count * sizes[dtype]
    return Parts(code, header, buffers)


def join_frame(code: int, packed_header: bytes, buffers: list[bytes], pad: bool = True) -> bytes:
    """Lay out a frame around an already packed header, fixing ``header_len`` and ``length``."""
    body = bytearray(U32.pack(len(packed_header)) + packed_header)
    for raw in buffers:
        if pad:
            body += bytes(-(8 + len(body)) % 8)
        body += raw
    return FRAME_HEAD.pack(code, len(body)) + bytes(body)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def pack_map_pairs(pairs: list[tuple[Any, Any]]) -> bytes:
    """A msgpack map from pairs (bytes values are taken as already packed): allows duplicate
    and non-string keys, and values nested deeper than msgpack's packer would go."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(
        pack(k) + (v if isinstance(v, bytes) else pack(v)) for k, v in pairs)


def _evil(rng: random.Random) -> Any:
    """A value of a random (often wrong) type or out-of-range."""
    return rng.choice([
        None, True, False, 0, 1, -1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, -(2**63),
        0.0, 1.5, -0.5, math.nan, math.inf, -math.inf, 1e308,
        "", "x", "float32", "dense", "indices", "bitmap", "\u2603" * 3,
        b"", b"\x00" * 4, [], [[]], [1], [[1], 2], [["float32"]], [["float32", 1, 2]],
        [["uint8", 2**62]], [["float32", -1]], [[["float32"], 1]], [[{"a": 1}, 1]],
        {}, {"a": 1}, {"encoding": "dense"}, {"encoding": "dense", "size": 2**40},
        {"encoding": ["dense"], "size": 3}, {"encoding": "bitmap", "size": -1},
        {"encoding": "indices", "size": 1.5}, {"peer_id": "a", "address": "b", "weight": "c"},
        [{"peer_id": "a", "address": "b", "weight": math.nan}], [[[[[[]]]]]],
        msgpack.ExtType(1, b"x"), msgpack.Timestamp(0),
    ])


def _walk(obj: Any, rng: random.Random) -> tuple[Any, Any] | None:
    """A random (container, key) inside ``obj`` (maps and lists), or None."""
    slots: list[tuple[Any, Any]] = []

    def visit(node: Any, depth: int) -> None:
        if depth > 6:
            return
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            slots.append((node, key))
            if isinstance(value, (dict, list)):
                visit(value, depth + 1)

    visit(obj, 0)
    return rng.choice(slots) if slots else None


def _nest(depth: int, as_map: bool) -> bytes:
    """Packed msgpack: ``depth`` single-entry maps or arrays around an int."""
    return (b"\x81\xa1a" if as_map else b"\x91") * depth + b"\x01"


def mutate_header(rng: random.Random, frame: bytes) -> bytes:
    """Rewrite the msgpack header of a valid frame (keys, types, buffers, vectors, raw msgpack)."""
    parts = split_frame(frame)
    header = parts.header
    op = rng.randrange(14)
    if op == 0 and header:
        del header[rng.choice(list(header))]
    elif op == 1:
        header[rng.choice(["extra", "buffers", "vector", "version", "Version"])] = _evil(rng)
    elif op in (2, 3, 4):
        slot = _walk(header, rng)
        if slot:
            slot[0][slot[1]] = _evil(rng)
    elif op == 5:
        header["version"] = rng.choice([0, 2, 1.0, True, "1", None, 2**64 - 1])
    elif op == 6:  # hostile buffer descriptions
        descs = header.get("buffers", [["float32", 1]])
        descs = [list(d) for d in descs] if isinstance(descs, list) else descs
        choice = rng.randrange(6)
        if choice == 0 and descs:
            rng.choice(descs)[1] = rng.choice([0, 1, 2**31, 2**63 - 1, -1, 1.0, "2"])
        elif choice == 1 and descs:
            rng.choice(descs)[0] = rng.choice(["float64", "int8", "uint32", "uint8", 1, None, ["x"]])
        elif choice == 2:
            descs.append(["uint8", rng.randint(0, 16)])
        elif choice == 3 and descs:
            descs.pop(rng.randrange(len(descs)))
        elif choice == 4:
            descs = [["uint8", 0]] * rng.choice([16, 17, 1000])
        else:
            descs = rng.choice([{}, "float32", None, [1, 2], [["float32", 1, 1]]])
        header["buffers"] = descs
    elif op == 7 and isinstance(header.get("vector"), dict):
        header["vector"][rng.choice(["encoding", "size"])] = _evil(rng)
    elif op == 8:  # deep nesting, below and far above both limits
        key = rng.choice(["info", "metrics", "extra"])
        nested = _nest(rng.choice([31, 33, 200, 3000]), rng.random() < 0.5)
        pairs = [(k, v) for k, v in header.items() if k != key] + [(key, nested)]
        return join_frame(parts.code, pack_map_pairs(pairs), parts.buffers)
    elif op == 9:  # raw msgpack: duplicate keys or non-string keys
        pairs = list(header.items())
        if pairs and rng.random() < 0.5:
            pairs.append(rng.choice(pairs))
        else:
            pairs.append((rng.choice([1, -1, 1.5, b"k", None]), 1))
        return join_frame(parts.code, pack_map_pairs(pairs), parts.buffers)
    elif op == 10:  # a header that is not a map, or is cut short / followed by junk
        packed = rng.choice([
            pack([1, 2]), pack(1), pack("x"), b"", pack(header)[:-1], pack(header) + b"\x00",
            b"\xc1", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
            b"\xc6\x7f\xff\xff\xff", b"\xa3\xff\xfe\xfd",
        ])
        return join_frame(parts.code, packed, parts.buffers)
    elif op == 11:  # wrong message code for the header
        return join_frame(rng.choice(CODES), pack(header), parts.buffers)
    elif op == 12 and parts.buffers:  # buffer bytes wrong: resize one
        i = rng.randrange(len(parts.buffers))
        parts.buffers[i] = parts.buffers[i][: rng.randint(0, len(parts.buffers[i]))] + bytes(
            rng.choice([0, 1, 4, 8]))
    elif op == 13:  # strings that are not valid UTF-8
        slot = _walk(header, rng)
        packed = pack(header)
        if slot and isinstance(slot[0][slot[1]], str) and slot[0][slot[1]]:
            target = pack(slot[0][slot[1]])
            packed = packed.replace(target, target[:-1] + b"\xff", 1)
        return join_frame(parts.code, packed, parts.buffers)
    return join_frame(parts.code, pack(header), parts.buffers, pad=rng.random() < 0.95)


def _set_u32(frame: bytes, offset: int, value: int) -> bytes:
    if len(frame) < offset + 4:
        return frame
    return frame[:offset] + U32.pack(value % 2**32) + frame[offset + 4 :]


def _nan_floats(rng: random.Random, frame: bytes) -> bytes:
    parts = split_frame(frame)
    floats = [i for i, d in enumerate(parts.header.get("buffers", [])) if d[0] == "float32"]
    if not floats or not parts.buffers[floats[-1]]:
        return frame
    i = floats[-1]
    raw = bytearray(parts.buffers[i])
    j = rng.randrange(len(raw) // 4)
    special = rng.choice([math.nan, math.inf, -math.inf, 3.4e38, 1e-45])
    raw[4 * j : 4 * j + 4] = struct.pack("<f", special)
    parts.buffers[i] = bytes(raw)
    return join_frame(parts.code, pack(parts.header), parts.buffers)


def _nonzero_padding(rng: random.Random, frame: bytes) -> bytes:
    header_len = int.from_bytes(frame[8:12], "big")
    pad_at = 12 + header_len
    if pad_at % 8 == 0 or pad_at >= len(frame):
        return frame
    data = bytearray(frame)
    data[pad_at] = rng.randint(1, 255)
    return bytes(data)


Mutator = Callable[[random.Random, bytes, list[bytes]], bytes]


def _flip_bytes(rng: random.Random, f: bytes, _: list[bytes]) -> bytes:
    data = bytearray(f)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def _flip_bits(rng: random.Random, f: bytes, _: list[bytes]) -> bytes:
    data = bytearray(f)
    for _ in range(rng.randint(1, 3)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def _insert_delete(rng: random.Random, f: bytes, _: list[bytes]) -> bytes:
    i = rng.randrange(len(f))
    if rng.random() < 0.5:
        return f[:i] + f[i + rng.randint(1, 8) :]
    return f[:i] + rng.randbytes(rng.randint(1, 8)) + f[i:]


MUTATORS: dict[str, Mutator] = {
    "flip_bytes": _flip_bytes,
    "flip_bits": _flip_bits,
    "insert_delete": _insert_delete,
    "truncate": lambda rng, f, _: f[: rng.randrange(len(f))],
    "extend": lambda rng, f, _: f + rng.choice([bytes(rng.randint(1, 16)),
                                              rng.randbytes(rng.randint(1, 64))]),
    "splice": lambda rng, f, c: f[: rng.randrange(len(f))] + (g := rng.choice(c))[rng.randrange(len(g)):],
    "concat": lambda rng, f, c: f + rng.choice(c)[: rng.choice([None, 5, 9, 13])],
    "code": lambda rng, f, _: _set_u32(f, 0, rng.choice([*CODES, 0, 1000, 1017, 2**32 - 1,
                                                          rng.randrange(2**32)])),
    "length": lambda rng, f, _: _set_u32(f, 4, rng.choice([
        0, 3, 4, 5, len(f) - 8 + rng.randint(-9, 9), 2**31, 2**32 - 1, (1 << 20) + 1,
        rng.randrange(2**32)])),
    "header_len": lambda rng, f, _: _set_u32(f, 8, rng.choice([
        0, 1, int.from_bytes(f[8:12], "big") + rng.randint(-9, 9), 2**31, 2**32 - 1,
        rng.randrange(2**32)])),
    "msgpack_header": lambda rng, f, _: mutate_header(rng, f),
    "nan_floats": lambda rng, f, _: _nan_floats(rng, f),
    "padding": lambda rng, f, _: _nonzero_padding(rng, f),
    "random_bytes": lambda rng, f, _: rng.randbytes(rng.choice([0, 1, 7, 8, 12, 50, 300])),
    "random_body": lambda rng, f, _: (
        FRAME_HEAD.pack(rng.choice(CODES), n := rng.randint(0, 200)) + rng.randbytes(n)),
    "stacked": lambda rng, f, c: _stacked(rng, f, c),
    "sequence": lambda rng, f, c: _sequence(rng, f, c),
}
STACKABLE = ("flip_bytes", "flip_bits", "extend", "code", "length", "header_len", "insert_delete")


def _stacked(rng: random.Random, frame: bytes, corpus: list[bytes]) -> bytes:
    """A header rewrite followed by one or two byte-level mutations."""
    data = mutate_header(rng, frame)
    for _ in range(rng.randint(1, 2)):
        data = MUTATORS[rng.choice(STACKABLE)](rng, data, corpus) if data else data
    return data


def _sequence(rng: random.Random, frame: bytes, corpus: list[bytes]) -> bytes:
    """Valid frames (a plausible session, or random ones) with one of them mutated."""
    frames = [rng.choice(corpus) for _ in range(rng.randint(1, 5))]
    if rng.random() < 0.5:  # the client's side of a coordinator session, in order
        frames = [c for c in corpus if c[:4] == U32.pack(1001)][:1] + frames
    i = rng.randrange(len(frames) + 1)
    mutated = MUTATORS[rng.choice((*STACKABLE, "msgpack_header", "truncate"))](rng, frame, corpus)
    return b"".join([*frames[:i], mutated, *frames[i:]])


# --- feeding ----------------------------------------------------------------------------------


def _chunks(rng: random.Random, data: bytes) -> list[bytes]:
    if rng.random() < 0.5 or len(data) < 2:
        return [data] if data else []
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 8))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def feed_decoder(data: bytes, limits: Limits, chunks: list[bytes]) -> list[Message]:
    """All frames a :class:`FrameDecoder` yields for ``chunks`` followed by EOF."""
    decoder = FrameDecoder(limits)
    out: list[Message] = []
    for chunk in [*chunks, b""]:
        decoder.receive_data(chunk)
        while (frame := decoder.next_frame()) is not NEED_DATA:
            if frame is EOF:
                return out
            out.append(frame.message)
    raise AssertionError("decoder returned NEED_DATA after EOF")


def drain(conn: Connection, chunks: list[bytes]) -> tuple[list[Message], bool]:
    """The messages ``conn`` accepts from ``chunks`` then EOF, and whether it reported the EOF."""
    out: list[Message] = []
    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        for event in conn.events():
            if event is EOF:
                return out, True
            out.append(event)
    return out, False


def feed_connection(role: Role, chunks: list[bytes], token: bytes | None = None) -> list[Message]:
    """All messages a :class:`Connection` in ``role`` accepts from ``chunks`` then EOF."""
    conn = Connection(role, token=token) if token else Connection(role)  # type: ignore[call-arg]
    out, ended = drain(conn, chunks)
    if not ended:
        raise AssertionError("connection returned NEED_DATA after EOF")
    return out


TOKEN = b"ringfl-fuzz-token-0123456789"
HAS_TOKENS = "token" in inspect.signature(Connection).parameters
"""Whether this checkout's Connection supports run-token authentication (tagged frames)."""


def authenticated_pair() -> tuple[Connection, Connection]:
    """A client and a server Connection sharing a run token, past the join handshake."""
    client = Connection(Role.CLIENT, local_id="p1", token=TOKEN)  # type: ignore[call-arg]
    server = Connection(Role.SERVER, local_id="coordinator", token=TOKEN)  # type: ignore[call-arg]
    server.receive_data(client.send(JoinRequest(num_samples=10)))
    assert isinstance(server.next_event(), JoinRequest)
    client.receive_data(server.send(Accept(num_params=64, spec_hash="h")))
    assert isinstance(client.next_event(), Accept)
    return client, server


def seal(conn: Connection, code: int, content: bytes) -> bytes:
    """A frame with an arbitrary body and a *valid* tag of ``conn``'s session: what an insider
    who holds the run token can make the other side parse. Reaches into the connection's
    private auth state (a test harness may)."""
    from ringfl.protocol.auth import TAG_SIZE

    mac = conn._auth.send_mac  # type: ignore[attr-defined]
    head = FRAME_HEAD.pack(code % 2**32, len(content) + TAG_SIZE)
    return head + content + mac.tag([head, content])


def sealed_garbage(rng: random.Random, conn: Connection, corpus: list[bytes]) -> bytes:
    """A mutated corpus frame, re-framed and tagged for ``conn``'s session."""
    name = rng.choice((*STACKABLE, "msgpack_header", "nan_floats", "random_body"))
    data = MUTATORS[name](rng, rng.choice(corpus), corpus)
    code = int.from_bytes(data[:4], "big") if len(data) >= 4 else rng.choice(CODES)
    return seal(conn, code, data[8:])


def authenticated_input(
    rng: random.Random, corpus: list[bytes]
) -> tuple[str, bytes, Callable[[], list[Message]]]:
    """A mutated *tagged* frame of a live authenticated session, to feed to the server side (or
    unauthenticated bytes for a fresh token-checking server): (mutator, bytes, feed)."""
    if rng.random() < 0.3:
        name = rng.choice(STACKABLE)
        data = MUTATORS[name](rng, rng.choice(corpus), corpus)
        chunks = _chunks(rng, data)
        return f"auth_plain_{name}", data, lambda: feed_connection(Role.SERVER, chunks, TOKEN)
    client, server = authenticated_pair()
    frames = [client.send(SpecConfirm(spec_hash="h"))]
    if rng.random() < 0.5:  # one step further: the spec is agreed, upload something
        server.receive_data(frames[0])
        list(server.events())
        client.receive_data(server.send(SpecReply(ok=True, spec_hash="h")))
        list(client.events())
        vector = np.asarray([rng.gauss(0, 1) for _ in range(64)], np.float32)
        frames = [client.send(Upload(vector=vector, num_samples=5))]
    if rng.random() < 0.4:  # an insider: garbage with a valid tag reaches the decoder
        name = "sealed"
        data = b"".join(frames) + sealed_garbage(rng, client, corpus)
    else:
        frames.append(client.send(PeerReport(metrics={"loss": 0.5})))
        name = rng.choice((*STACKABLE, "truncate", "splice", "concat", "random_bytes"))
        data = MUTATORS[name](rng, b"".join(frames), frames)
    chunks = _chunks(rng, data)

    return f"auth_{name}", data, lambda: drain(server, chunks)[0]


def decode_any(rng: random.Random, data: bytes) -> list[Message]:
    """Decode ``data`` one of several ways; returns the messages it held."""
    mode = rng.randrange(4)
    limits = rng.choice(LIMIT_CHOICES)
    if mode == 0:
        return [decode(data, limits)]
    if mode == 3:
        return feed_connection(rng.choice(list(Role)), _chunks(rng, data))
    return feed_decoder(data, limits, _chunks(rng, data))


def _fits(upload: Upload) -> bool:
    size = upload.vector.size
    return size == 64 or isinstance(upload.vector, SparseVector) and size <= 64


def roundtrip_ok(message: Message) -> bool:
    """What the decoder accepts, the encoder must accept and reproduce byte for byte."""
    limits = Limits(max_frame=1 << 26, allow_nonfinite=True)
    frame = encode(message, limits)
    return encode(decode(frame, limits), limits) == frame


# --- the campaign -----------------------------------------------------------------------------


def _normalise(text: str) -> str:
    """Error message with numbers and quoted values blanked, for counting distinct kinds."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    return re.sub(r"\d+(\.\d+)?", "#", text)[:160]


@dataclass
class Report:
    inputs: int = 0
    decoded: int = 0  # inputs that yielded at least one valid message
    rejected: int = 0  # inputs that raised RemoteProtocolError
    crashes: int = 0
    roundtrip_mismatches: int = 0
    errors: Counter = field(default_factory=Counter)
    crash_kinds: Counter = field(default_factory=Counter)
    per_mutator: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)


def next_input(
    rng: random.Random, corpus: list[bytes]
) -> tuple[str, bytes, Callable[[], list[Message]]]:
    """One fuzz input: (mutator name, bytes, how to decode them)."""
    if HAS_TOKENS and rng.random() < 0.1:
        return authenticated_input(rng, corpus)
    name = rng.choice(list(MUTATORS))
    frame = rng.choice(corpus)
    data = MUTATORS[name](rng, frame, corpus)
    return name, data, lambda: decode_any(rng, data)


def fuzz(count: int, seconds: float, seed: int, show: int = 3) -> Report:
    """Mutate corpus frames until ``count`` inputs or ``seconds`` elapsed."""
    rng = random.Random(seed)
    corpus = build_corpus(rng)
    report = Report()
    stop = time.perf_counter() + seconds
    while report.inputs < count and time.perf_counter() < stop:
        name, data, feed = next_input(rng, corpus)
        report.inputs += 1
        report.per_mutator[name.split("_", 1)[0] if name.startswith("auth") else name] += 1
        try:
            messages = feed()
        except RemoteProtocolError as exc:
            report.rejected += 1
            report.errors[_normalise(str(exc))] += 1
            continue
        except Exception as exc:
            _crash(report, name, data, exc, show)
            continue
        if messages:
            report.decoded += 1
        for message in messages:
            try:
                ok = roundtrip_ok(message)
            except Exception as exc:
                ok = False
                detail = f"{type(exc).__name__}: {exc}"
            else:
                detail = "decoded again to a different message"
            if not ok:
                report.roundtrip_mismatches += 1
                if len(report.examples) < show:
                    report.examples.append(f"round trip of {message!r:.300}: {detail}")
    return report


def _crash(report: Report, mutator: str, data: bytes, exc: Exception, show: int) -> None:
    report.crashes += 1
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    kind = f"{type(exc).__name__} at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
    report.crash_kinds[kind] += 1
    if report.crash_kinds[kind] == 1 and len(report.examples) < show:
        trace = "".join(traceback.format_exception(exc))
        report.examples.append(f"crash via {mutator}, input {data[:160].hex()}\n{trace}")


# --- allocation bombs -------------------------------------------------------------------------


def _peak_while(feed: Callable[[], object]) -> tuple[int, str]:
    """tracemalloc peak (bytes) while ``feed`` runs, and how it ended."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        outcome = repr(feed())
    except RemoteProtocolError as exc:
        outcome = f"RemoteProtocolError({exc.code.name}): {exc}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, outcome


def allocation_bombs() -> dict[str, dict[str, Any]]:
    """Hostile sizes must be refused (or wait for data) without allocating what they claim."""

    def upload(vector: dict[str, Any], buffers: list[list[Any]]) -> bytes:
        header = {"version": 1, "run_id": "", "sender": "", "round": 0, "seq": 0,
                  "vector": vector, "num_samples": 0, "base_version": 0, "kind": "delta",
                  "info": {}, "buffers": buffers}
        return join_frame(int(Upload.CODE), pack(header), [bytes(8)])

    def raw_header(packed: bytes) -> bytes:
        return join_frame(int(Upload.CODE), packed, [])

    bombs: dict[str, tuple[bytes, str]] = {  # input (built outside the measurement), outcome
        "frame_head_2GiB": (FRAME_HEAD.pack(1004, 2**31), "TOO_LARGE"),
        "frame_head_4GiB": (FRAME_HEAD.pack(1008, 2**32 - 1), "TOO_LARGE"),
        "frame_head_at_limit_waits": (FRAME_HEAD.pack(1004, 1 << 20), "NEED_DATA"),
        "header_len_2GiB": (FRAME_HEAD.pack(1004, 8) + U32.pack(2**31) + b"\x80" * 4, "PROTOCOL"),
        "msgpack_array_2^32": (raw_header(b"\xdd\xff\xff\xff\xff"), "PROTOCOL"),
        "msgpack_map_2^32": (raw_header(b"\xdf\xff\xff\xff\xff"), "PROTOCOL"),
        "msgpack_str_2GiB": (raw_header(b"\xdb\x7f\xff\xff\xff"), "PROTOCOL"),
        "buffer_count_2^62": (upload({"encoding": "dense", "size": 2**62},
                                     [["float32", 2**62]]), "PROTOCOL"),
        "bitmap_size_2^32": (upload({"encoding": "bitmap", "size": 2**32},
                                    [["uint8", 2**29], ["float32", 0]]), "PROTOCOL"),
    }
    out = {}
    for name, (data, expected) in bombs.items():
        decoder = FrameDecoder()
        peak, outcome = _peak_while(lambda d=decoder, x=data: (d.receive_data(x), d.next_frame())[1])
        ok = peak < ALLOC_PEAK_LIMIT and expected in outcome
        out[name] = {"peak_bytes": peak, "ok": ok, "outcome": outcome[:120]}
    return out


# --- entry point ------------------------------------------------------------------------------


def summary(report: Report, bombs: dict[str, dict[str, Any]], seconds: float,
            seed: int) -> dict[str, Any]:
    return {
        "inputs_fuzzed": report.inputs,
        "crashes": report.crashes,
        "crash_kinds": dict(report.crash_kinds),
        "rejected": report.rejected,
        "decoded": report.decoded,
        "roundtrip_mismatches": report.roundtrip_mismatches,
        "distinct_error_messages": len(report.errors),
        "allocation_bombs_ok": all(b["ok"] for b in bombs.values()),
        "allocation_peak_max_bytes": max(b["peak_bytes"] for b in bombs.values()),
        "seconds": round(seconds, 2),
        "seed": seed,
        "per_mutator": dict(sorted(report.per_mutator.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="inputs to fuzz")
    parser.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=3, help="crash tracebacks to print")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report = fuzz(args.count, args.seconds, args.seed, args.show)
    bombs = allocation_bombs()
    record = summary(report, bombs, time.perf_counter() - started, args.seed)
    for example in report.examples:
        print(example, file=sys.stderr)
    for name, bomb in bombs.items():
        if not bomb["ok"]:
            print(f"allocation bomb {name} failed: {bomb}", file=sys.stderr)
    print(json.dumps(record))
    bad = report.crashes or report.roundtrip_mismatches or not record["allocation_bombs_ok"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
