"""Minimal streaming reader and writer for the safetensors format.

The format is an 8-byte little-endian header length, a JSON header mapping each
tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to
the end of the header), then the raw little-endian bytes. Handling it directly (not
through `safetensors.numpy`) gives us bfloat16 through ml_dtypes and lets the
loader memory-map a file and copy out one tensor at a time, and lets the writer
stream tensors to disk one by one after writing a header planned from shapes alone.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable

import ml_dtypes
import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsFile:
    """A memory-mapped .safetensors file; `read(name)` copies one tensor out."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        self._header = header
        self._data_start = 8 + header_len
        self._mmap = np.memmap(path, dtype=np.uint8, mode="r")

    def keys(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        info = self._header[name]
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype "
                             f"{info['dtype']}; supported: {sorted(_DTYPES)}")
        begin, end = info["data_offsets"]
        raw = self._mmap[self._data_start + begin:self._data_start + end]
        return np.frombuffer(raw, dtype=_DTYPES[info["dtype"]]).reshape(
            info["shape"]).copy()


def write_file(path: str, entries: Iterable[tuple[str, tuple[int, ...], np.dtype]],
               produce: Callable[[str], np.ndarray]) -> int:
    """Writes a .safetensors file, fetching each tensor from `produce(name)` in turn.

    Args:
      path: output file.
      entries: (name, shape, dtype) of each tensor, in file order.
      produce: returns the named tensor with exactly that shape and dtype.

    Returns:
      The number of tensor bytes written.
    """
    entries = list(entries)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # 8-byte aligned data.
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for name, shape, dtype in entries:
            array = produce(name)
            if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
                raise ValueError(f"{name}: produced {array.shape} {array.dtype}, planned "
                                 f"{tuple(shape)} {np.dtype(dtype)}")
            f.write(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"),
                                                       copy=False).tobytes())
    os.replace(tmp, path)
    return offset
