"""One GGUF file written in a stream: metadata and tensor table first, then tensor data
in table order, hashed as it goes, with file writes in a background thread."""
from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import numpy as np

from quantkit.threads import Sink


class StreamingGGUF:
    def __init__(self, path: Path, writer: gguf.GGUFWriter, tensors: list[tuple[str, tuple[int, ...], str, int]]):
        """writer: holds every key already; tensors: (name, shape in HF order, ggml type, bytes) in data order."""
        self.path = Path(path)
        self.alignment = writer.data_alignment
        for name, shape, typ, nbytes in tensors:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=gguf.GGMLQuantizationType[typ])
        writer.write_header_to_file(self.path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        self._writer = writer
        self._f = writer.fout[0]
        self._f.flush()
        self.sha256 = hashlib.sha256()
        with open(self.path, "rb") as f:  # the metadata part, already on disk
            self.sha256.update(f.read())
        self._pos = self._f.tell()
        self._order = [(name, nbytes) for name, _, _, nbytes in tensors]
        self._next = 0
        self._left = 0
        self._sink = Sink(self._write)
        self._pad()

    def _write(self, data) -> None:
        self._f.write(data)
        self.sha256.update(data)

    def _emit(self, data) -> None:
        self._sink.put(data)
        self._pos += len(data)

    def _pad(self) -> None:
        pad = -self._pos % self.alignment
        if pad:
            self._emit(bytes(pad))

    def begin(self, name: str) -> None:
        if self._left:
            raise ValueError(f"{self._order[self._next - 1][0]} was not finished")
        expected, nbytes = self._order[self._next]
        if name != expected:
            raise ValueError(f"tensor {name} written where {expected} was planned")
        self._next += 1
        self._left = nbytes

    def write(self, data: np.ndarray) -> None:
        """Bytes of the current tensor, in order; the array must not be modified afterwards."""
        mv = memoryview(np.ascontiguousarray(data)).cast("B")
        if len(mv) > self._left:
            raise ValueError("more bytes than the tensor holds")
        self._emit(mv)
        self._left -= len(mv)
        if not self._left:
            self._pad()

    def close(self) -> str:
        if self._left or self._next != len(self._order):
            raise ValueError(f"{self.path.name}: not every planned tensor was written")
        self._sink.close()
        self._writer.close()
        return self.sha256.hexdigest()

    def abort(self) -> None:
        try:
            self._sink.abort()
        finally:
            self._writer.close()
