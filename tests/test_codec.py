"""Frame codec: round trips, incremental decoding, hostile input, sparse encodings, limits."""

from __future__ import annotations

import contextlib
import re
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ringfl.protocol import (
    EOF,
    MESSAGE_TYPES,
    NEED_DATA,
    PROTOCOL_VERSION,
    Ack,
    Code,
    ErrorCode,
    FrameDecoder,
    Heartbeat,
    Limits,
    LocalProtocolError,
    Neighbour,
    Params,
    ParamsRequest,
    PeerReport,
    RemoteProtocolError,
    RoundStart,
    SpecReply,
    Upload,
    bitmap_is_smaller,
    decode,
    default_max_frame,
    encode,
    encode_frame,
    encode_parts,
)
from ringfl.protocol.messages import ENVELOPE, Kind
from ringfl.protocol.secagg_messages import SECAGG_KEY_SIZE, SECAGG_SEALED_SIZE, SECAGG_SHARE_SIZE
from ringfl.vectors import SparseVector

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = Limits(max_frame=1 << 22)

# --- strategies -------------------------------------------------------------------------------

ids = st.text(max_size=12)
u63 = st.integers(0, 2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | finite | st.text(max_size=10)
)
plain_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)
plain = st.dictionaries(st.text(max_size=8), plain_values, max_size=5)
DENSITIES = [0.0, 0.001, 0.01, 0.03, 0.1, 0.5, 1.0]


@st.composite
def sparse_vectors(draw: st.DrawFn) -> SparseVector:
    size = draw(st.integers(0, 3000))
    density = draw(st.sampled_from(DENSITIES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    nnz = min(size, round(size * density))
    values = rng.standard_normal(nnz).astype(np.float32)
    return SparseVector.from_indices(size, rng.choice(size, nnz, replace=False), values)


dense_vectors = st.one_of(
    hnp.arrays(
        np.float32,
        st.integers(0, 40),
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
    ),
    st.integers(0, 5000).map(
        lambda n: np.random.default_rng(n).standard_normal(n).astype(np.float32)
    ),
)
vectors = st.one_of(sparse_vectors(), dense_vectors)

KIND_STRATEGIES = {
    Kind.STR: ids,
    Kind.INT: u63,
    Kind.FLOAT: finite,
    Kind.BOOL: st.booleans(),
    Kind.PLAIN: plain,
    Kind.NEIGHBOURS: st.lists(st.builds(Neighbour, ids, ids, finite), max_size=4).map(tuple),
    Kind.VECTOR: vectors,
    Kind.BYTES: hnp.arrays(np.uint8, st.integers(0, 300)),
    Kind.WORDS: hnp.arrays(np.uint32, st.integers(0, 2000)),
    Kind.IDS: st.lists(ids, max_size=6, unique=True).map(tuple),
}
OVERRIDES = {
    ("ParamsRequest", "fraction"): st.floats(0, 1, exclude_min=True),
    ("RoundStart", "deadline"): st.floats(0, 1e9),
}


def _consistent(cls: type, kwargs: dict) -> dict:
    """Apply the cross-field rules (check()) to generated fields."""
    if cls is SpecReply:
        kwargs["spec_json"] = "" if kwargs["ok"] else kwargs["spec_json"] or "{}"
    if cls is Ack:
        kwargs["reason"] = 0 if kwargs["accepted"] else kwargs["reason"] or 1
    return _consistent_secagg(cls.__name__, kwargs)


def _sized(blob: np.ndarray, size: int) -> np.ndarray:
    """``blob`` cut or cycled to ``size`` bytes (the secagg messages fix their blob sizes)."""
    return np.resize(blob, size).astype(np.uint8) if blob.size else np.full(size, 7, np.uint8)


def _consistent_secagg(name: str, kw: dict) -> dict:
    if name == "SecAggKeys":
        kw.update({k: _sized(kw[k], SECAGG_KEY_SIZE) for k in ("c_pk", "s_pk", "b_commit")})
    elif name == "SecAggRoster":
        n = len(kw["peers"]) or 1
        kw["peers"] = kw["peers"] or ("p",)
        kw.update(keys=_sized(kw["keys"], n * 2 * SECAGG_KEY_SIZE), threshold=1 + kw["threshold"] % n,
                  points=np.arange(1, n + 1, dtype=np.uint32))
    elif name in ("SecAggShares", "SecAggInbox"):
        ids_key = "recipients" if name == "SecAggShares" else "senders"
        kw["sealed"] = _sized(kw["sealed"], len(kw[ids_key]) * SECAGG_SEALED_SIZE)
    elif name == "SecAggUnmask":
        kw["shares"] = _sized(kw["shares"], len(kw["peers"]) * SECAGG_SHARE_SIZE)
    elif name == "SecAggUnmaskRequest":
        kw["dropped"] = tuple(p for p in kw["dropped"] if p not in kw["survivors"])
    return kw


def message_strategy(cls: type) -> st.SearchStrategy:
    fields = {
        name: OVERRIDES.get((cls.__name__, name), KIND_STRATEGIES[kind])
        for name, kind in ENVELOPE + cls.FIELDS
        if name != "version"
    }
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**_consistent(cls, kw)))


any_message = st.one_of([message_strategy(cls) for cls in MESSAGE_TYPES.values()])


def decode_stream(data: bytes, limits: Limits = LIMITS, step: int | None = None) -> list:
    """All messages in ``data`` (fed whole, or ``step`` bytes at a time), then EOF."""
    decoder = FrameDecoder(limits)
    out: list = []

    def drain() -> object:
        while (frame := decoder.next_frame()) is not NEED_DATA and frame is not EOF:
            out.append(frame.message)
        return frame

    size = step or max(len(data), 1)
    for start in range(0, len(data), size):
        decoder.receive_data(data[start : start + size])
        drain()
    decoder.receive_data(b"")
    assert drain() is EOF
    return out


def frame_header(frame: bytes) -> dict:
    """The msgpack header of an encoded frame, decoded independently of the codec."""
    (header_len,) = struct.unpack(">I", frame[8:12])
    return msgpack.unpackb(frame[12 : 12 + header_len])


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
@settings(SETTINGS, max_examples=50)
@given(data=st.data())
def test_every_message_type_round_trips(cls: type, data: st.DataObject) -> None:
    message = data.draw(message_strategy(cls))
    frame = encode(message, LIMITS)
    assert struct.unpack(">I", frame[:4])[0] == cls.CODE
    assert struct.unpack(">I", frame[4:8])[0] == len(frame) - 8
    header = frame_header(frame)
    assert header["version"] == PROTOCOL_VERSION and header["run_id"] == message.run_id
    assert decode(frame, LIMITS) == message


@SETTINGS
@given(message=message_strategy(Params))
def test_vectors_reconstruct_bit_exactly(message: Params) -> None:
    decoded = decode(encode(message, LIMITS), LIMITS).vector
    if isinstance(message.vector, SparseVector):
        assert decoded.size == message.vector.size
        assert decoded.indices.tobytes() == message.vector.indices.tobytes()
        assert decoded.values.tobytes() == message.vector.values.tobytes()
    else:
        assert decoded.dtype == np.float32
        assert decoded.tobytes() == message.vector.tobytes()


@SETTINGS
@given(messages=st.lists(any_message, min_size=1, max_size=5), step=st.integers(1, 64))
def test_byte_by_byte_equals_whole_buffer(messages: list, step: int) -> None:
    stream = b"".join(encode(m, LIMITS) for m in messages)
    whole = decode_stream(stream)
    assert whole == messages
    assert decode_stream(stream, step=1) == whole
    assert decode_stream(stream, step=step) == whole


def test_empty_vectors_round_trip() -> None:
    for vector in (SparseVector.empty(0), SparseVector.empty(1000), np.zeros(0, np.float32)):
        message = Upload(vector=vector)
        assert decode(encode(message)) == message


# --- sparse encodings ---------------------------------------------------------------------------


def _sparse(size: int, nnz: int) -> SparseVector:
    rng = np.random.default_rng(size + nnz)
    idx = rng.choice(size, nnz, replace=False)
    return SparseVector.from_indices(size, idx, rng.standard_normal(nnz).astype(np.float32))


@pytest.mark.parametrize(
    ("nnz", "encoding"), [(0, "indices"), (31, "indices"), (32, "bitmap"), (1000, "bitmap")]
)
def test_sparse_encoding_is_the_smaller_one(nnz: int, encoding: str) -> None:
    vector = _sparse(1000, nnz)  # bitmap = 125 bytes, indices = 4 * nnz bytes
    frame = encode(Upload(vector=vector))
    assert frame_header(frame)["vector"] == {"encoding": encoding, "size": 1000}
    assert bitmap_is_smaller(1000, nnz) == (encoding == "bitmap")
    assert decode(frame).vector == vector


@pytest.mark.parametrize("theta", [0.1, 0.01, 0.001])
def test_sparse_wire_size_is_near_optimal(theta: float) -> None:
    size = 1_000_000
    nnz = int(size * theta)
    frame, payload = encode_frame(
        Upload(vector=_sparse(size, nnz), run_id="run-1", sender="peer-1"), Limits().for_model(size)
    )
    best = min(8 * nnz, -(-size // 8) + 4 * nnz)
    assert payload == best
    assert len(frame) <= 1.02 * best + 128


def test_bitmap_uses_little_endian_bit_order() -> None:
    vector = SparseVector.from_indices(
        16, np.array([0, 3, 9, 10, 11, 12, 15]), np.arange(7, dtype=np.float32)
    )
    frame = encode(Upload(vector=vector))
    header = frame_header(frame)
    assert header["buffers"] == [["uint8", 2], ["float32", 7]]
    start = 12 + struct.unpack(">I", frame[8:12])[0]
    start += -start % 8
    assert frame[start : start + 2] == bytes([0b00001001, 0b10011110])


# --- an independent encoder following docs/protocol.md ------------------------------------------


def manual_frame(code: int, header: dict, arrays: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    if arrays:
        header = {
            **header,
            "buffers": [[dtype, len(raw) // {"uint8": 1}.get(dtype, 4)] for dtype, raw in arrays],
        }
    packed = msgpack.packb(header)
    body = bytearray(struct.pack(">I", len(packed)) + packed)
    for _, raw in arrays:
        body += bytes(-(8 + len(body)) % 8) + raw
    return struct.pack(">II", code, len(body)) + bytes(body)


def envelope(**fields: object) -> dict:
    return {"version": 1, "run_id": "r", "sender": "s", "round": 2, "seq": 3, **fields}


def test_documented_layout_matches_the_encoder() -> None:
    values = np.array([1.5, -2.0], dtype="<f4")
    indices = np.array([1, 7], dtype="<u4")
    header = envelope(
        vector={"encoding": "indices", "size": 100}, num_samples=5, base_version=0, kind="delta",
        info={},
    )
    frame = manual_frame(
        1004, header, (("uint32", indices.tobytes()), ("float32", values.tobytes()))
    )
    message = Upload(
        vector=SparseVector(100, indices, values),
        num_samples=5,
        run_id="r",
        sender="s",
        round=2,
        seq=3,
    )
    assert encode(message) == frame
    assert decode(frame) == message


GOOD_UPLOAD = envelope(
    vector={"encoding": "dense", "size": 2}, num_samples=0, base_version=0, kind="delta", info={}
)
TWO_FLOATS = (("float32", np.array([1, 2], "<f4").tobytes()),)


@pytest.mark.parametrize(
    ("header", "arrays", "fragment"),
    [
        ({**GOOD_UPLOAD, "extra": 1}, TWO_FLOATS, "unexpected ['extra']"),
        ({k: v for k, v in GOOD_UPLOAD.items() if k != "kind"}, TWO_FLOATS, "missing ['kind']"),
        ({**GOOD_UPLOAD, "num_samples": "5"}, TWO_FLOATS, "num_samples must be an int"),
        ({**GOOD_UPLOAD, "num_samples": True}, TWO_FLOATS, "num_samples must be an int"),
        ({**GOOD_UPLOAD, "round": -1}, TWO_FLOATS, "round must be in"),
        (
            {**GOOD_UPLOAD, "vector": {"encoding": "dense", "size": 3}},
            TWO_FLOATS,
            "float32 buffer of 3",
        ),
        (
            {**GOOD_UPLOAD, "vector": {"encoding": "zip", "size": 2}},
            TWO_FLOATS,
            "unknown vector encoding",
        ),
        (GOOD_UPLOAD, (("float64", bytes(16)),), "dtype in"),
        (GOOD_UPLOAD, (("float32", np.array([1, np.nan], "<f4").tobytes()),), "NaN or infinite"),
        (GOOD_UPLOAD, TWO_FLOATS + TWO_FLOATS, "not used by any field"),
        (
            {**GOOD_UPLOAD, "vector": {"encoding": "indices", "size": 10}},
            (("uint32", np.array([5, 2], "<u4").tobytes()), ("float32", bytes(8))),
            "sorted, unique",
        ),
        (
            {**GOOD_UPLOAD, "vector": {"encoding": "indices", "size": 10}},
            (("uint32", np.array([2, 10], "<u4").tobytes()), ("float32", bytes(8))),
            "below the size",
        ),
        (
            {**GOOD_UPLOAD, "vector": {"encoding": "bitmap", "size": 3}},
            (("uint8", bytes([0b1001])), ("float32", bytes(8))),
            "beyond the vector size",
        ),
        (envelope(accepted=True, reason=2, ack_seq=1, detail=""), (), "reason"),
    ],
)
def test_invalid_bodies_are_remote_errors(header: dict, arrays: tuple, fragment: str) -> None:
    code = Code.ACK if "accepted" in header else Code.UPLOAD
    with pytest.raises(RemoteProtocolError, match=re.escape(fragment)):
        decode(manual_frame(code, header, arrays))


def test_wrong_version_is_reported_as_such() -> None:
    with pytest.raises(RemoteProtocolError, match="version 2") as info:
        decode(manual_frame(Code.HEARTBEAT, {**envelope(), "version": 2}))
    assert info.value.code is ErrorCode.VERSION


def test_header_layout_violations() -> None:
    good = manual_frame(Code.UPLOAD, {**GOOD_UPLOAD, "kind": "dx"}, TWO_FLOATS)
    padded = bytearray(good)
    pad_at = 12 + struct.unpack(">I", good[8:12])[0]
    assert -pad_at % 8, "test needs a frame with padding"
    padded[pad_at] = 1
    cases = {
        "padding bytes must be zero": bytes(padded),
        "not described by its header": good[:4]
        + struct.pack(">I", len(good) - 4)
        + good[8:]
        + bytes(4),
        "unknown message code": struct.pack(">I", 999) + good[4:],
        "too short": struct.pack(">II", Code.HEARTBEAT, 2) + bytes(2),
        "does not fit the frame": struct.pack(">III", Code.HEARTBEAT, 4, 100),
        "duplicate map keys": struct.pack(">III", Code.HEARTBEAT, 11, 7)
        + b"\x82\xa1a\x01\xa1a\x02",
        "must be a map": struct.pack(">III", Code.HEARTBEAT, 5, 1) + b"\x01",
        "malformed msgpack": struct.pack(">III", Code.HEARTBEAT, 6, 2) + b"\xc7\x01",
    }
    for fragment, frame in cases.items():
        with pytest.raises(RemoteProtocolError, match=fragment):
            decode(frame)


def test_nonfinite_values_are_rejected_both_ways_unless_allowed() -> None:
    vector = np.array([1.0, np.inf], np.float32)
    with pytest.raises(LocalProtocolError, match="NaN or infinite"):
        encode(Params(vector=vector))
    lenient = Limits(allow_nonfinite=True)
    frame = encode(Params(vector=vector), lenient)
    with pytest.raises(RemoteProtocolError, match="NaN or infinite"):
        decode(frame)
    assert np.isinf(decode(frame, lenient).vector[1])


# --- local misuse -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (Params(vector=np.zeros(3)), "dtype float32"),
        (Params(vector=np.zeros((2, 2), np.float32)), "1-D"),
        (Params(vector=[1.0, 2.0]), "1-D numpy array"),
        (
            Params(vector=SparseVector(5, np.array([3, 1], np.uint32), np.ones(2, np.float32))),
            "sorted",
        ),
        (Params(vector=SparseVector(5, np.array([1], np.int64), np.ones(1, np.float32))), "uint32"),
        (
            Params(vector=SparseVector(5, np.array([1], np.uint32), np.ones(2, np.float32))),
            "differ in length",
        ),
        (Upload(vector=np.zeros(1, np.float32), num_samples=-1), "num_samples"),
        (Upload(vector=np.zeros(1, np.float32), kind=3), "kind must be str"),
        (RoundStart(deadline=float("nan")), "finite"),
        (RoundStart(deadline=-1.0), "deadline"),
        (ParamsRequest(fraction=0.0), "fraction"),
        (PeerReport(metrics={"loss": np.float32(1)}), "numpy scalars"),
        (PeerReport(metrics={1: 2}), "key must be str"),
        (SpecReply(ok=False, spec_hash="h"), "spec_json"),
        (Heartbeat(version=2), "version"),
    ],
)
def test_invalid_messages_are_local_errors(message: object, fragment: str) -> None:
    with pytest.raises(LocalProtocolError, match=fragment):
        encode(message)


def test_sender_refuses_frames_over_its_limit() -> None:
    with pytest.raises(LocalProtocolError, match="over the limit") as info:
        encode(Params(vector=np.zeros(1000, np.float32)), Limits(max_frame=1000))
    assert info.value.code is ErrorCode.TOO_LARGE


# --- hostile input ------------------------------------------------------------------------------


def assert_only_remote_errors(data: bytes, step: int | None = None) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_stream(data, step=step)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_remote_errors(data: bytes) -> None:
    assert_only_remote_errors(data)
    assert_only_remote_errors(struct.pack(">II", Code.UPLOAD, len(data)) + data)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(encode(draw(any_message), LIMITS))
    op = draw(st.sampled_from(["flip", "truncate", "extend", "code", "length", "insert", "delete"]))
    pos = draw(st.integers(0, len(frame) - 1))
    if op == "flip":
        frame[pos] ^= draw(st.integers(1, 255))
    elif op == "truncate":
        del frame[pos:]
    elif op == "extend":
        frame += draw(st.binary(min_size=1, max_size=20))
    elif op == "code":
        frame[0:4] = struct.pack(
            ">I", draw(st.integers(0, 2**32 - 1) | st.sampled_from(list(Code)))
        )
    elif op == "length":
        frame[4:8] = struct.pack(">I", draw(st.integers(0, 2**32 - 1) | st.integers(0, len(frame))))
    elif op == "insert":
        frame.insert(pos, draw(st.integers(0, 255)))
    else:
        del frame[pos]
    return bytes(frame)


@SETTINGS
@given(frame=mutated_frames(), step=st.sampled_from([None, 1, 7]))
def test_mutated_frames_raise_only_remote_errors(frame: bytes, step: int | None) -> None:
    assert_only_remote_errors(frame, step)


def test_oversize_length_fails_before_the_body_arrives() -> None:
    decoder = FrameDecoder(Limits())
    head = struct.pack(">II", Code.UPLOAD, 2**31)
    for byte in head[:-1]:
        decoder.receive_data(bytes([byte]))
        assert decoder.next_frame() is NEED_DATA
    decoder.receive_data(head[-1:])
    with pytest.raises(RemoteProtocolError, match="over the limit") as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.TOO_LARGE
    assert decoder.buffered == 0
    with pytest.raises(RemoteProtocolError, match="already failed"):
        decoder.next_frame()


def test_eof_between_frames_is_clean_and_inside_a_frame_is_an_error() -> None:
    frame = encode(Heartbeat())
    assert decode_stream(frame) == [Heartbeat()]
    decoder = FrameDecoder()
    decoder.receive_data(frame[:-1])
    decoder.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed in the middle"):
        decoder.next_frame()
    with pytest.raises(LocalProtocolError, match="after EOF"):
        decoder.receive_data(b"x")


def test_decode_of_nothing_is_a_remote_error() -> None:
    with pytest.raises(RemoteProtocolError, match="exactly one frame"):
        decode(b"")


def test_unhashable_buffer_dtype_is_a_remote_error() -> None:
    frame = bytearray(encode(Upload(vector=np.zeros(3, np.float32))))
    header = frame_header(bytes(frame))
    header["buffers"] = [[["float32"], 3]]
    packed = msgpack.packb(header)
    body = struct.pack(">I", len(packed)) + packed
    body += bytes(-(8 + len(body)) % 8) + bytes(12)
    with pytest.raises(RemoteProtocolError, match="buffer entries"):
        decode(struct.pack(">II", Code.UPLOAD, len(body)) + body)


# --- hooks for an authentication layer ----------------------------------------------------------


def test_encode_parts_counts_a_trailer_in_length_and_limit() -> None:
    message = Params(vector=np.ones(10, np.float32))
    parts, payload = encode_parts(message, LIMITS, trailer=32)
    frame = b"".join(parts)
    assert frame == encode(message)[:4] + struct.pack(">I", len(frame) - 8 + 32) + frame[8:]
    assert payload == 40 and encode_frame(message) == (encode(message), 40)
    encode_parts(message, Limits(max_frame=len(frame) - 8 + 32), trailer=32)
    with pytest.raises(LocalProtocolError, match="over the limit") as info:
        encode_parts(message, Limits(max_frame=len(frame) - 8 + 31), trailer=32)
    assert info.value.code is ErrorCode.TOO_LARGE


def test_verifier_sees_each_whole_frame_before_the_code_is_checked() -> None:
    seen: list[tuple[int, int, bytes]] = []

    def verify(code: int, length: int, body: memoryview) -> memoryview:
        seen.append((code, length, bytes(body)))
        return body[: length - 3]  # a 3-byte "tag"

    good = encode(Heartbeat(seq=1))
    trailer = bytes(3)
    framed = good[:4] + struct.pack(">I", len(good) - 8 + 3) + good[8:] + trailer
    unknown = struct.pack(">II", 999, len(good) - 8 + 3) + good[8:] + trailer
    decoder = FrameDecoder()
    decoder.receive_data(framed + unknown + struct.pack(">II", Code.HEARTBEAT, 0))
    frame = decoder.next_frame(verify)
    assert frame.message == Heartbeat(seq=1) and frame.header_bytes == len(framed)
    with pytest.raises(RemoteProtocolError, match="unknown message code 999"):
        decoder.next_frame(verify)  # the verifier saw it first
    assert [code for code, _, _ in seen] == [Code.HEARTBEAT, 999]
    empty = FrameDecoder()
    empty.receive_data(struct.pack(">II", Code.HEARTBEAT, 0))  # a zero-length body is no crash
    with pytest.raises(RemoteProtocolError, match="too short"):
        empty.next_frame(lambda code, length, body: body)


# --- zero copy and limits -----------------------------------------------------------------------


def test_dense_decode_is_a_read_only_view_of_the_received_bytes() -> None:
    vector = np.arange(1000, dtype=np.float32)
    frame = encode(Params(vector=vector))
    decoded = decode(frame).vector
    assert np.shares_memory(decoded, np.frombuffer(frame, np.uint8))
    assert not decoded.flags.writeable
    split = decode_stream(frame, step=100)[0].vector  # reassembled once, still exact
    assert np.array_equal(split, vector) and split.flags.aligned


def test_default_max_frame_follows_the_model_size() -> None:
    assert default_max_frame(0) == 64 * 1024
    assert default_max_frame(1_000_000) == int(4.4e6) + 64 * 1024
    limits = Limits().for_model(1000)
    assert limits.max_frame == default_max_frame(1000) and limits.max_vector_size == 1000
    big = Upload(vector=np.zeros(1001, np.float32))
    with pytest.raises(LocalProtocolError, match="exceeds the limit"):
        encode(big, limits)


def test_documented_examples() -> None:
    heartbeat = encode(Heartbeat(run_id="r1", sender="p1", round=3, seq=7))
    assert len(heartbeat) == 54
    assert heartbeat[:13].hex(" ") == "00 00 03 f6 00 00 00 2e 00 00 00 2a 85"
    vector = SparseVector(20, np.array([2, 9], np.uint32), np.array([0.5, -1.0], np.float32))
    upload = encode(
        Upload(vector=vector, run_id="r1", sender="p1", round=3, seq=8, num_samples=600)
    )
    assert len(upload) == 176 and upload[:12].hex(" ") == "00 00 03 ec 00 00 00 a8 00 00 00 91"
    assert upload[157:].hex(" ") == "00 00 00 04 02 00 00 00 00 00 00 00 00 00 3f 00 00 80 bf"


def test_received_sparse_vectors_are_marked_checked_and_forward_unchanged() -> None:
    """The pool skips re-verifying what the codec verified; a relay re-sends identical bytes."""
    vector = SparseVector.from_indices(1000, np.arange(0, 1000, 7), np.ones(143, np.float32))
    assert not vector.checked
    frame = encode(Upload(vector=vector))
    received = decode(frame).vector
    assert received.checked and not received.indices.flags.writeable
    assert received.bitmap() is received.bitmap()  # packed once for every neighbour
    assert encode(Upload(vector=received)) == frame
    assert vector.bitmap() is not vector.bitmap()  # writable indices: never cached
    assert not decode(frame, Limits(allow_nonfinite=True)).vector.checked
