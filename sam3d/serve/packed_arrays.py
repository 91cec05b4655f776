"""The array format of nnInteractive's remote protocol: a small header, then blosc2-compressed chunks.

Layout (little-endian): ``b"NNIA"``, format version (1), codec (1 ZSTD, 2 LZ4), number of axes, length
of the dtype name, the dtype name in ASCII (``"float32"``), one int64 per axis, the number of chunks
(uint32), then per chunk its raw and compressed byte counts (two uint64) and the blosc2 frame. Written
here from the protocol's description; ``nninteractive-client`` packs and unpacks the same bytes.
"""

from __future__ import annotations

import math
import struct

import blosc2
import numpy as np

from sam3d.errors import Sam3dError

__all__ = ["pack", "unpack"]

MAGIC = b"NNIA"
VERSION = 1
CODECS = {1: blosc2.Codec.ZSTD, 2: blosc2.Codec.LZ4}
# blosc2 compresses at most 2 GiB per call.
CHUNK_BYTES = 1 << 30
_HEAD = struct.Struct("<4sBBBB")
_CHUNK = struct.Struct("<QQ")


class PackedArrayError(Sam3dError):
    """A body that is not a packed array, or one larger than allowed."""


def pack(array: np.ndarray) -> bytes:
    """``array`` as a packed array (ZSTD, level 3, no filter: masks compress best so)."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    name = array.dtype.name.encode("ascii")
    raw = array.reshape(-1).view(np.uint8).data
    starts = range(0, raw.nbytes, CHUNK_BYTES)
    parts = [
        _HEAD.pack(MAGIC, VERSION, 1, array.ndim, len(name)),
        name,
        struct.pack(f"<{array.ndim}q", *array.shape),
        struct.pack("<I", len(starts)),
    ]
    for start in starts:
        piece = raw[start : start + CHUNK_BYTES]
        frame = blosc2.compress2(
            piece,
            typesize=array.dtype.itemsize,
            codec=blosc2.Codec.ZSTD,
            clevel=3,
            filters=[blosc2.Filter.NOFILTER],
        )
        parts += [_CHUNK.pack(piece.nbytes, len(frame)), frame]
    return b"".join(parts)


def unpack(body: bytes, max_elements: int) -> np.ndarray:
    """The array of a packed body, refusing one of more than ``max_elements`` elements before decompressing.

    Raises:
        PackedArrayError: If the body is not a packed array (wrong magic, version, codec, dtype or sizes).
    """
    try:
        return _unpack(memoryview(body), max_elements)
    except PackedArrayError:
        raise
    except (struct.error, ValueError, TypeError, RuntimeError) as error:
        raise PackedArrayError(f"the body is not a packed nnInteractive array ({error})") from None


def _unpack(view: memoryview, max_elements: int) -> np.ndarray:
    magic, version, codec, ndim, name_length = _HEAD.unpack_from(view, 0)
    if magic != MAGIC or version != VERSION or codec not in CODECS:
        raise ValueError(f"header {bytes(view[:8])!r}: expected magic NNIA, version 1, codec 1 or 2")
    offset = _HEAD.size
    dtype = np.dtype(bytes(view[offset : offset + name_length]).decode("ascii"))
    if dtype.kind not in "biuf":
        raise ValueError(f"dtype {dtype} is not a number type")
    offset += name_length
    shape = struct.unpack_from(f"<{ndim}q", view, offset)
    offset += 8 * ndim
    if any(n < 0 for n in shape):
        raise ValueError(f"negative shape {shape}")
    elements = math.prod(shape)
    if elements > max_elements:
        raise PackedArrayError(
            f"the array of shape {shape} has {elements:,} elements, more than this server accepts "
            f"({max_elements:,}, --max_voxels); crop it to the region of interest"
        )
    (chunks,) = struct.unpack_from("<I", view, offset)
    offset += 4
    out = np.empty(elements, dtype=dtype)
    target = out.view(np.uint8)
    written = 0
    for _ in range(chunks):
        raw_bytes, frame_bytes = _CHUNK.unpack_from(view, offset)
        offset += _CHUNK.size
        frame = view[offset : offset + frame_bytes]
        if len(frame) != frame_bytes or written + raw_bytes > target.size:
            raise ValueError("a chunk runs past the body or the array")
        if blosc2.get_cbuffer_sizes(frame)[0] != raw_bytes:
            raise ValueError("a chunk's size differs from its frame's")
        target[written : written + raw_bytes] = np.frombuffer(blosc2.decompress2(frame), np.uint8)
        written += raw_bytes
        offset += frame_bytes
    if written != target.size:
        raise ValueError(f"{written} bytes of data for {target.size} expected")
    return out.reshape(shape)
