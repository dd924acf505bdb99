"""One pass over the source that writes every GGUF file at once.

Each tensor is read once (streamed from the safetensors shards), laid out for llama.cpp (q/k
rows permuted), and encoded once per distinct ggml type the files need, in chunks of rows on
every core, so memory holds one source tensor plus a bounded chunk of work.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import gguf
import numpy as np
import torch

from quantkit.backends.base import Progress
from quantkit.backends.gguf import convert, encode, mix, vocab
from quantkit.backends.gguf.tensors import nbytes
from quantkit.backends.gguf.writer import StreamingGGUF
from quantkit.source import Source
from quantkit.stio import DTYPES, HashingReader
from quantkit.threads import prefetch


@dataclass
class OutputFile:
    file_type: str
    path: Path
    types: dict[str, str] = field(default_factory=dict)  # GGUF tensor name -> ggml type


class Written(NamedTuple):
    file_hashes: dict[str, str]  # output file name -> sha256
    source_hashes: dict[str, str]  # source shard name -> sha256


def write(source: Source, planned: list[convert.PlannedTensor], files: list[OutputFile], imx,
          progress: Progress) -> Written:
    """Write every file of `files` (their tensor types already set) in one pass over the source.
    imx: the imatrix the quantized types are encoded with, or None."""
    hp = convert.hparams(source.config)
    writers: list[StreamingGGUF] = []
    try:
        for f in files:
            w = gguf.GGUFWriter(None, hp.arch_name)
            convert.add_metadata(w, source.config, source.name, mix.FILE_TYPES[f.file_type][0])
            vocab.add_vocab(w, source.path, hp.dims.vocab)
            tensors = [(p.name, p.shape, f.types[p.name], nbytes(f.types[p.name], p.shape)) for p in planned]
            writers.append(StreamingGGUF(f.path, w, tensors))
        with _Workers(os.cpu_count() or 1) as pool:
            source_hashes = _stream(source, planned, files, writers, imx, progress, pool)
        file_hashes = {f.path.name: w.close() for f, w in zip(files, writers)}
    except BaseException:
        for w in writers:
            w.abort()
        raise
    return Written(file_hashes, source_hashes)


def _stream(source, planned, files, writers, imx, progress, pool: _Workers) -> dict[str, str]:
    by_hf = {p.hf_name: p for p in planned if p.hf_name}
    computed = [p for p in planned if p.hf_name is None]
    for p in computed:  # rope_freqs: computed from the config, F32 in every file
        data = convert.llama3_rope_factors(source.config)
        for w in writers:
            w.begin(p.name)
            w.write(data.view(np.uint8))
    source_hashes = {}
    for src_file in source.weight_files:
        reader = HashingReader(source.headers[src_file.name])
        # q/k are permuted, so read whole; the rest, embeddings and head included, arrive as raw
        # chunks and are encoded a slab of rows at a time
        whole = {p.hf_name for p in by_hf.values() if p.permute_heads or len(p.shape) < 2}
        rows: _Rows | None = None
        for info, data in prefetch(reader.stream(whole)):
            p = by_hf.get(info.name)
            if p is None:  # skipped (tied lm_head, inv_freq): read past it
                progress(len(data))
                continue
            weights = None if imx is None else imx.weights(p.name)
            if isinstance(data, torch.Tensor):
                _begin(p, writers)
                tensor = convert.permute_rows(data, p.permute_heads) if p.permute_heads else data
                _encode_rows(p, tensor.reshape(-1, p.shape[-1]), files, writers, weights, pool)
                progress(info.nbytes)
                continue
            if rows is None or rows.info is not info:
                _begin(p, writers)
                rows = _Rows(info)
            slab = rows.feed(data)
            if slab is not None:
                _encode_rows(p, slab, files, writers, weights, pool)
            progress(len(data))
        source_hashes[src_file.name] = reader.finish()
    return source_hashes


def _begin(p: convert.PlannedTensor, writers) -> None:
    for w in writers:
        w.begin(p.name)


def _encode_rows(p: convert.PlannedTensor, rows: torch.Tensor, files, writers, weights, pool: _Workers) -> None:
    """Encode whole rows for every file, in chunks on the pool's threads, written in order."""
    step = encode.rows_per_chunk(rows.shape[1])
    types = list(dict.fromkeys(f.types[p.name] for f in files))

    def job(r: int) -> dict[str, np.ndarray]:
        chunk, f32, out = rows[r:r + step], None, {}
        for t in types:
            if t in encode.TORCH_TYPES:
                out[t] = encode.from_torch(t, chunk)
            else:
                f32 = chunk.to(torch.float32).numpy() if f32 is None else f32
                out[t] = encode.encode(t, f32, weights)
        return out

    for done in pool.ordered(job, range(0, rows.shape[0], step)):
        for f, w in zip(files, writers):
            w.write(done[f.types[p.name]])


class _Rows:
    """Raw chunks of one tensor -> slabs of whole rows (a row may straddle two chunks)."""

    def __init__(self, info):
        self.info = info
        self.dtype = DTYPES[info.dtype][0]
        self.cols = info.shape[-1]
        self.row_bytes = self.cols * DTYPES[info.dtype][1]
        self.carry = bytearray()

    def feed(self, chunk: memoryview) -> torch.Tensor | None:
        data = memoryview(self.carry + chunk) if self.carry else chunk
        n = len(data) // self.row_bytes
        self.carry = bytearray(data[n * self.row_bytes:])
        if not n:
            return None
        return torch.frombuffer(data[: n * self.row_bytes], dtype=self.dtype).reshape(n, self.cols)


class _Workers:
    """The encoding threads of one pass (none on one core; numpy releases the GIL in the encoders)."""

    def __init__(self, n: int):
        self.n = n
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="quantkit-encode") if n > 1 else None

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def ordered(self, fn: Callable, items: Iterable) -> Iterator:
        """fn over items, results in order, at most two per thread in flight so memory stays bounded."""
        if self._pool is None:
            yield from map(fn, items)
            return
        pending: deque = deque()
        for item in items:
            pending.append(self._pool.submit(fn, item))
            if len(pending) >= 2 * self.n:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
