"""Streaming safetensors: read and write one tensor at a time, hashing as the bytes go by.

Why not `safetensors.safe_open`: it memory-maps the whole file, and every page it
touches counts in the process's resident set, so converting a 5 GB shard costs
5 GB of RSS. Here each tensor is read with plain file reads into its own buffer
and written straight out, so memory holds one tensor (or one chunk of a
pass-through tensor) whatever the shard size. The format itself is small and
stable: 8-byte little-endian header length, a JSON header, then the data.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import torch

from quantkit.errors import SourceError
from quantkit.threads import Sink

# safetensors dtype name -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "BOOL": (torch.bool, 1),
    "U8": (torch.uint8, 1),
    "I8": (torch.int8, 1),
    "I16": (torch.int16, 2),
    "U16": (torch.uint16, 2),
    "I32": (torch.int32, 4),
    "U32": (torch.uint32, 4),
    "I64": (torch.int64, 8),
    "U64": (torch.uint64, 8),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "BF16": (torch.bfloat16, 2),
    "F16": (torch.float16, 2),
    "F32": (torch.float32, 4),
    "F64": (torch.float64, 8),
}
TORCH_TO_ST = {v[0]: k for k, v in DTYPES.items()}
FLOAT_DTYPES = {"BF16", "F16", "F32", "F64"}
MAX_HEADER = 100 * 1024 * 1024
CHUNK = 64 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offset in the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    path: Path
    header_len: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    def ordered(self) -> list[TensorInfo]:
        return sorted(self.tensors.values(), key=lambda t: t.begin)


def read_header(path: Path) -> Header:
    """Parse and check a safetensors header; any inconsistency names the file."""
    path = Path(path)

    def bad(why: str) -> SourceError:
        return SourceError(
            f"{path.name} is not a complete safetensors file ({why}); re-download or re-save it"
        )

    try:
        size = path.stat().st_size
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory")
    except OSError as e:
        raise SourceError(f"cannot read {path.name} ({e.strerror}); re-download it") from None
    if size < 8:
        raise bad(f"only {size} bytes")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER or n > size - 8:
            raise bad(f"header length {n} does not fit in {size} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"malformed entry for {name}") from None
        if dtype not in DTYPES:
            raise bad(f"unknown dtype {dtype} for {name}")
        if end - begin != math.prod(shape) * DTYPES[dtype][1] or begin < 0:
            raise bad(f"size of {name} does not match its shape")
        if end > data_size:
            raise bad(f"{name} ends at byte {end} of a {data_size}-byte data section: truncated")
        tensors[name] = TensorInfo(name, dtype, shape, begin, end)
    covered = max((t.end for t in tensors.values()), default=0)
    if covered != data_size:
        raise bad(f"data section is {data_size} bytes but tensors cover {covered}")
    return Header(path, n, tensors, metadata)


class HashingReader:
    """Reads a safetensors file front to back, tensor by tensor, hashing every byte."""

    def __init__(self, header: Header):
        self.header = header
        self.sha256 = hashlib.sha256()
        self._f: BinaryIO = open(header.path, "rb", buffering=0)
        self._pos = 0
        self.sha256.update(self._read_exact(header.data_start))

    def _read_exact(self, n: int, out: memoryview | None = None) -> bytes | memoryview:
        buf = out if out is not None else memoryview(bytearray(n))
        got = 0
        while got < n:
            k = self._f.readinto(buf[got:n])
            if not k:
                raise SourceError(f"{self.header.path.name} ended early while reading; re-download it")
            got += k
        self._pos += n
        return buf if out is not None else bytes(buf)

    def _seek_to(self, info: TensorInfo) -> None:
        target = self.header.data_start + info.begin
        if target < self._pos:
            raise ValueError("tensors must be read in file order")
        while self._pos < target:  # gaps are hashed too, so the digest is the file's
            self.sha256.update(self._read_exact(min(CHUNK, target - self._pos)))

    def tensor(self, info: TensorInfo) -> torch.Tensor:
        """The whole tensor, in its stored dtype, in a fresh buffer."""
        self._seek_to(info)
        dtype, _ = DTYPES[info.dtype]
        buf = torch.empty(info.nbytes, dtype=torch.uint8)
        mv = memoryview(buf.numpy())
        self._read_exact(info.nbytes, mv)
        self.sha256.update(mv)
        return buf.view(dtype).reshape(info.shape)

    def chunks(self, info: TensorInfo) -> Iterator[memoryview]:
        """The tensor's raw bytes in bounded chunks, each in a fresh buffer (at least one chunk)."""
        self._seek_to(info)
        left = info.nbytes
        while True:
            k = min(CHUNK, left)
            buf = memoryview(torch.empty(k, dtype=torch.uint8).numpy())  # uninitialised: no memset
            self._read_exact(k, buf)
            self.sha256.update(buf)
            yield buf
            left -= k
            if not left:
                return

    def stream(self, whole: set[str]) -> Iterator[tuple[TensorInfo, torch.Tensor | memoryview]]:
        """Every tensor in file order: those named in `whole` as one tensor, the rest as raw chunks."""
        for info in self.header.ordered():
            if info.name in whole:
                yield info, self.tensor(info)
            else:
                for chunk in self.chunks(info):
                    yield info, chunk

    def finish(self) -> str:
        """Hash whatever follows the last tensor read and return the file's sha256."""
        end = self.header.path.stat().st_size
        while self._pos < end:
            self.sha256.update(self._read_exact(min(CHUNK, end - self._pos)))
        self._f.close()
        return self.sha256.hexdigest()


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype][1]


class StreamWriter:
    """Writes a safetensors file whose tensor list is known before any data is.

    The header is written first from the plan; tensors must then arrive in plan
    order. The file's sha256 is computed as it is written.
    """

    def __init__(self, path: Path, plan: list[PlannedTensor], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.plan = plan
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = metadata
        offset = 0
        for t in plan:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.sha256 = hashlib.sha256()
        self._f = open(self.path, "wb")
        self._sink = Sink(self._write_and_hash)  # file writes and hashing run beside the caller
        self._emit(struct.pack("<Q", len(raw)) + raw)
        self._next = 0
        self._left = 0  # bytes still owed to the current tensor
        self.bytes = 0

    def _write_and_hash(self, data: bytes | memoryview) -> None:
        self._f.write(data)
        self.sha256.update(data)

    def _emit(self, data: bytes | memoryview) -> None:
        """Queue bytes for writing; the caller must not modify them afterwards."""
        self._sink.put(data)

    def _start(self, name: str) -> PlannedTensor:
        if self._left:
            raise ValueError(f"{self.plan[self._next - 1].name} was not finished")
        if self._next >= len(self.plan) or self.plan[self._next].name != name:
            raise ValueError(f"unexpected tensor {name}")
        t = self.plan[self._next]
        self._next += 1
        self._left = t.nbytes
        return t

    def write(self, name: str, tensor: torch.Tensor) -> None:
        t = self._start(name)
        if TORCH_TO_ST[tensor.dtype] != t.dtype or tuple(tensor.shape) != t.shape:
            raise ValueError(f"{name}: got {tensor.dtype} {tuple(tensor.shape)}, planned {t.dtype} {t.shape}")
        self.write_bytes(memoryview(tensor.contiguous().view(torch.uint8).reshape(-1).numpy()))

    def begin(self, name: str) -> None:
        """Start a tensor whose bytes follow in pieces through write_bytes."""
        self._start(name)

    def write_bytes(self, data: memoryview) -> None:
        if len(data) > self._left:
            raise ValueError("more bytes than the tensor holds")
        self._emit(data)
        self._left -= len(data)

    def close(self) -> str:
        if self._left or self._next != len(self.plan):
            raise ValueError(f"{self.path.name}: not every planned tensor was written")
        self._sink.close()
        self._f.close()
        self.bytes = self.path.stat().st_size
        return self.sha256.hexdigest()

    def abort(self) -> None:
        try:
            self._sink.abort()
        finally:
            self._f.close()


def read_tensor(header: Header, name: str) -> torch.Tensor:
    """One tensor by name, read with plain file reads into its own buffer (no memory map)."""
    info = header.tensors[name]
    buf = torch.empty(info.nbytes, dtype=torch.uint8)
    mv = memoryview(buf.numpy())
    with open(header.path, "rb", buffering=0) as f:
        f.seek(header.data_start + info.begin)
        got = 0
        while got < info.nbytes:
            k = f.readinto(mv[got:])
            if not k:
                raise SourceError(f"{header.path.name} ended early while reading {name}; re-download it")
            got += k
    return buf.view(DTYPES[info.dtype][0]).reshape(info.shape)


def shard_names(n: int) -> list[str]:
    """Output shard names as transformers writes them."""
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def transcribe(header: Header, writer: StreamWriter, whole: set[str], on_whole, progress) -> tuple[str, str]:
    """Read `header`'s file front to back (a reader thread ahead), hand each tensor named in `whole` to
    on_whole(info, tensor), which writes what replaces it, and copy every other tensor's bytes to `writer`
    as they come. Closes the writer (aborted on any error); returns the sha256 of the source file and of
    the file written."""
    from quantkit.threads import prefetch

    reader = HashingReader(header)
    current = None
    try:
        for t, data in prefetch(reader.stream(whole)):
            if t.name in whole:
                on_whole(t, data)
            else:
                if t.name != current:
                    writer.begin(t.name)
                writer.write_bytes(data)
            current = t.name
            progress(len(data) if isinstance(data, memoryview) else t.nbytes)
        return reader.finish(), writer.close()
    except BaseException:
        writer.abort()
        raise
