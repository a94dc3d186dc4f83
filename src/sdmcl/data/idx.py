"""Reader for the IDX format of MNIST and Fashion-MNIST, gzipped or not.

Layout (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"): two zero bytes, one
byte giving the element type, one byte giving the number of dimensions `d`, then `d`
big-endian uint32 sizes, then the elements in C order, big-endian. A file is taken as
gzipped when it starts with the gzip magic bytes 1f 8b, whatever its name.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from sdmcl.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX type byte → numpy dtype (big-endian as stored).
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _corrupt(path: str | Path, what: str) -> DataError:
    return DataError(f"{path}: {what}; the file is truncated or corrupt: delete it and download or copy it again")


def read_idx_bytes(path: str | Path) -> bytes:
    """The IDX content of `path`: decompressed when the file is gzipped, as is otherwise."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err}); check the file and its permissions") from None
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise _corrupt(path, f"gzip stream is damaged ({err})") from None


def parse_idx(content: bytes, path: str | Path = "<bytes>") -> np.ndarray:
    """Decode IDX `content` into an array of its declared shape, in native byte order.

    `path` only names the file in error messages.
    """
    if len(content) < 4:
        raise _corrupt(path, f"only {len(content)} bytes, shorter than the 4-byte IDX magic number")
    if content[0] != 0 or content[1] != 0:
        raise _corrupt(path, f"magic number {content[:4].hex()} does not start with 0000, so this is not an IDX file")
    type_code, ndim = content[2], content[3]
    if type_code not in IDX_DTYPES:
        raise _corrupt(path, f"unknown IDX element type 0x{type_code:02x}")
    if ndim == 0:
        raise _corrupt(path, "the header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(content) < header_len:
        raise _corrupt(path, f"the header declares {ndim} dimensions but the file ends inside the header")
    shape = tuple(int(s) for s in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[type_code]
    if 0 in shape:
        raise _corrupt(path, f"the header declares an empty array {shape}")
    expected = math.prod(shape) * dtype.itemsize  # exact: a product of four uint32 sizes overflows int64
    payload = len(content) - header_len
    if payload != expected:
        raise _corrupt(path, f"header says {shape} ({expected} data bytes) but {payload} data bytes follow")
    data = np.frombuffer(content, dtype=dtype, offset=header_len).reshape(shape)
    return data if dtype.itemsize == 1 else data.astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Parse the IDX file at `path` (gzipped or raw)."""
    return parse_idx(read_idx_bytes(path), path)
