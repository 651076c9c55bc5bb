"""Reader and writer for the IDX format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic ``00 00 <dtype> <ndim>``, ``ndim`` big-endian uint32 dimensions,
then the body in C order, big-endian. Files may be gzipped; we sniff the gzip header rather than
trust the extension so renamed files still load. Parsing is one ``np.frombuffer`` call: the
60,000-image Fashion-MNIST training set must load in well under a second.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ringfl.errors import DataError

#: IDX type code -> big-endian numpy dtype (the IDX spec's full table; 0x0A is unassigned).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (plain or gzipped) into a native-endian array of its declared shape."""
    path = Path(path)
    return _parse(_read_bytes(path), path)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as IDX, gzipped if ``path`` ends in ``.gz`` (tests build fixtures with it)."""
    array = np.asarray(array)
    code = _dtype_code(array.dtype)
    if code is None:
        raise DataError(f"cannot write IDX {path}: dtype {array.dtype} has no IDX type code")
    if array.ndim > 255:
        raise DataError(f"cannot write IDX {path}: {array.ndim} dimensions (max 255)")
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=1)
    Path(path).write_bytes(payload)


def _dtype_code(dtype: np.dtype) -> int | None:
    for code, idx_dtype in IDX_DTYPES.items():
        if idx_dtype.newbyteorder("=") == dtype.newbyteorder("="):
            return code
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc.strerror or exc}") from None
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"corrupt gzip in IDX file {path}: {exc}") from None


def _parse(data: bytes, path: Path) -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataError(f"not an IDX file (bad magic {data[:4].hex() or 'empty'}): {path}")
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"truncated IDX header in {path}: {ndim} dimensions declared")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        problem = "truncated" if actual < expected else "trailing bytes in"
        raise DataError(
            f"{problem} IDX body of {path}: shape {shape} needs {expected} bytes, found {actual}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))
