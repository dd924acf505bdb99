"""GGUF as llama.cpp and Ollama load it: quantkit's own converter and encoders.

One pass over the source writes every requested file type: each tensor is read
once (streamed from the safetensors shards), laid out for llama.cpp (q/k rows
permuted), and encoded once per distinct ggml type the files need, in chunks of
rows, so memory holds one source tensor plus a bounded chunk of work.

Types quantkit does not encode itself (IQ*) go to llama.cpp's own quantizer
with `--engine llamacpp` (needs `quantkit[llamacpp]`), from a BF16 GGUF that
quantkit writes in the same pass.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from quantkit import output
from quantkit.backends.base import BackendResult, Progress
from quantkit.backends.gguf import convert, encode, mix
from quantkit.errors import InputError
from quantkit.source import Source
from quantkit.stio import DTYPES, HashingReader
from quantkit.threads import prefetch

ENGINES = ("quantkit", "llamacpp")
# gguf's SpecialVocab logs what it skips (e.g. a post-processor's pair template) as warnings on
# stderr; what matters to the user comes back as notices instead.
logging.getLogger("gguf").setLevel(logging.ERROR)


def type_list(spec: str) -> list[str]:
    """`Q4_K_M,Q8_0` -> ["Q4_K_M", "Q8_0"], upper-cased, duplicates dropped."""
    types = [t.strip().upper() for t in spec.split(",") if t.strip()]
    if not types:
        raise InputError("--type is empty; pass one or more of " + ", ".join(mix.FILE_TYPES))
    return list(dict.fromkeys(types))


@dataclass
class OutputFile:
    file_type: str
    path: Path
    types: dict[str, str] = field(default_factory=dict)  # GGUF tensor name -> ggml type


class GGUF:
    name = "gguf"
    suffix = "GGUF"
    format = "gguf"

    def __init__(self, types: str = "Q4_K_M", engine: str = "quantkit", imatrix: bool = False,
                 imatrix_file: str | None = None, calibration: str | None = None, imatrix_chunks: int = 64):
        self.types = type_list(types)
        self.engine = engine
        self.use_imatrix = imatrix or imatrix_file is not None
        self.imatrix_file = imatrix_file
        self.calibration = calibration
        self.imatrix_chunks = imatrix_chunks
        self.notices: list[str] = []
        if engine not in ENGINES:
            raise InputError(f"--engine {engine}: choose quantkit or llamacpp")
        unknown = [t for t in self.types if t not in mix.FILE_TYPES]
        if unknown and engine != "llamacpp":
            raise InputError(
                f"--type {unknown[0]}: quantkit encodes {', '.join(mix.FILE_TYPES)}; "
                "for other llama.cpp types (IQ*) add --engine llamacpp (pip install 'quantkit[llamacpp]')")
        self.ours = [t for t in self.types if t in mix.FILE_TYPES]
        self.theirs = [t for t in self.types if t not in mix.FILE_TYPES]

    # -- the Backend interface -------------------------------------------------------------

    def estimate_bytes(self, source: Source) -> int:
        return sum(predicted_bytes(source.config, t) for t in self.ours) + len(self.theirs) * source.weight_bytes + (64 << 20)

    def check(self, source: Source) -> list[str]:
        """Everything that can be refused before work: architecture, rope, tokenizer, types, files.
        The metadata, vocabulary and Modelfile are built once here (cached) for their notices."""
        from quantkit.backends.gguf import modelfile, vocab

        hp = convert.hparams(source.config)
        w = gguf.GGUFWriter(None, hp.arch_name)
        notices = convert.add_metadata(w, source.config, source.name, 0)
        notices += vocab.add_vocab(w, source.path, hp.vocab)
        notices += modelfile.modelfile(f"{source.name}.gguf", source.path, source.config)[1]
        if self.theirs:
            from quantkit.backends.gguf import llamacpp

            llamacpp.check_types(self.theirs, self.use_imatrix)
        if self.imatrix_file and not Path(self.imatrix_file).is_file():
            raise InputError(f"--imatrix-file {self.imatrix_file}: no such file; pass an imatrix written by quantkit or llama-imatrix")
        if self.use_imatrix and set(self.ours) <= {"F16", "BF16", "Q8_0"} and not self.theirs:
            notices.append("an imatrix changes nothing for F16, BF16 and Q8_0")
        self.notices = list(dict.fromkeys(notices))
        return self.notices

    def run(self, source: Source, staging: Path, progress: Progress) -> BackendResult:
        from quantkit.backends.gguf import modelfile, vocab

        imx = self._imatrix(source, staging)
        hp = convert.hparams(source.config)
        order = [t.name for f in source.weight_files for t in source.headers[f.name].ordered()]
        shapes = {t.name: t.shape for h in source.headers.values() for t in h.tensors.values()}
        planned = convert.plan(source.config, order, shapes)

        files = [OutputFile(t, staging / f"{source.name}-{t}.gguf") for t in self.ours]
        tmp = None
        if self.theirs:  # llama.cpp quantizes from a lossless GGUF written in the same pass
            tmp = Path(tempfile.mkdtemp(prefix=".bf16-", dir=staging))
            files.append(OutputFile("BF16", tmp / f"{source.name}-BF16.gguf"))
        writers = []
        try:
            for f in files:
                f.types = tensor_types(f.file_type, planned, hp, imatrix=imx is not None)
                w = gguf.GGUFWriter(None, hp.arch_name)
                convert.add_metadata(w, source.config, source.name, mix.FILE_TYPES[f.file_type][0])
                vocab.add_vocab(w, source.path, hp.vocab)
                tensors = [(p.name, p.shape, f.types[p.name], _nbytes(f.types[p.name], p.shape)) for p in planned]
                writers.append(_open(f.path, w, tensors))
            source_hashes = self._stream(source, planned, files, writers, imx, progress)
            hashes = {f.path.name: w.close() for f, w in zip(files, writers)}
        except BaseException:
            for w in writers:
                w.abort()
            raise
        if self.theirs:
            from quantkit.backends.gguf import llamacpp

            bf16 = files[-1].path
            for t in self.theirs:
                out = staging / f"{source.name}-{t}.gguf"
                llamacpp.quantize(bf16, out, t, imx)
                files.append(OutputFile(t, out, llamacpp.tensor_types(out)))
            shutil.rmtree(tmp, ignore_errors=True)
            files = [f for f in files if f.path.parent == staging]
            hashes = {k: v for k, v in hashes.items() if (staging / k).exists()}
        for f in files:
            output.write_text_atomic(staging / (f.path.stem + ".Modelfile"), modelfile.modelfile(f.path.name, source.path, source.config)[0])
        return BackendResult(
            method="gguf",
            parameters={
                "types": self.types,
                "engine": {t: ("quantkit" if t in self.ours else "llama.cpp") for t in self.types},
                "imatrix": None if imx is None else {"file": imx.origin, "chunks": imx.chunks},
                "files": {f.path.name: {"file_type": f.file_type, "tensor_types": _count(f.types)} for f in files},
                "architecture": hp.arch_name,
                "notices": self.notices,
            },
            file_hashes=hashes,
            source_hashes=source_hashes,
            format="gguf",
        )

    # -- the pass over the source ------------------------------------------------------------

    def _imatrix(self, source: Source, staging: Path):
        if not self.use_imatrix:
            return None
        from quantkit.backends.gguf import imatrix, vocab

        if self.imatrix_file:
            return imatrix.load(Path(self.imatrix_file))
        # BOS at the start of each chunk exactly when the GGUF's tokenizer adds it, as llama-imatrix runs it
        add_bos = vocab.add_bos(source.path, source.config["vocab_size"])[0]
        imx = imatrix.compute(source.path, self.calibration, self.imatrix_chunks, add_bos=add_bos)
        imatrix.save(imx, staging / "imatrix.gguf")
        return imx

    def _stream(self, source, planned, files, writers, imx, progress) -> dict[str, str]:
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
            # q/k are permuted, so read whole (the largest is a few hundred MB even at 70B); the rest,
            # embeddings and head included, arrive as raw chunks and are encoded a slab of rows at a time
            whole = {p.hf_name for p in by_hf.values() if p.permute_heads or len(p.shape) < 2}
            rows: _Rows | None = None
            for info, data in prefetch(reader.stream(whole)):
                p = by_hf.get(info.name)
                if p is None:  # skipped (tied lm_head, inv_freq): read past it
                    progress(len(data))
                    continue
                weights = None if imx is None else imx.weights(p.name)
                if isinstance(data, torch.Tensor):
                    self._begin(p, writers)
                    tensor = convert.permute_rows(data, p.permute_heads) if p.permute_heads else data
                    self._encode_rows(p, tensor.reshape(-1, p.shape[-1]), files, writers, weights)
                    progress(info.nbytes)
                    continue
                if rows is None or rows.info is not info:
                    self._begin(p, writers)
                    rows = _Rows(info)
                slab = rows.feed(data)
                if slab is not None:
                    self._encode_rows(p, slab, files, writers, weights)
                progress(len(data))
            source_hashes[src_file.name] = reader.finish()
        return source_hashes

    @staticmethod
    def _begin(p: convert.PlannedTensor, writers) -> None:
        for w in writers:
            w.begin(p.name)

    @staticmethod
    def _encode_rows(p: convert.PlannedTensor, rows: torch.Tensor, files, writers, weights) -> None:
        """Encode whole rows for every file, in chunks on every core, written in order."""
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

        for done in _ordered(job, range(0, rows.shape[0], step)):
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


_POOL: ThreadPoolExecutor | None = None


def _ordered(fn, items):
    """fn over items on every core (numpy releases the GIL in the encoders), results in order,
    at most two per core in flight so memory stays bounded."""
    global _POOL
    workers = os.cpu_count() or 1
    if workers == 1:
        yield from map(fn, items)
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(workers, thread_name_prefix="quantkit-encode")
    pending: deque = deque()
    for item in items:
        pending.append(_POOL.submit(fn, item))
        if len(pending) >= 2 * workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _nbytes(typ: str, shape: tuple[int, ...]) -> int:
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return rows * encode.row_bytes(typ, shape[-1])


def _count(types: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in types.values():
        out[t] = out.get(t, 0) + 1
    return dict(sorted(out.items()))


def _open(path, writer, tensors):
    from quantkit.backends.gguf.writer import StreamingGGUF

    return StreamingGGUF(path, writer, tensors)


def predicted_bytes(config: dict, file_type: str) -> int:
    """Bytes of the tensor data of a `file_type` file for this config (the metadata adds a little)."""
    from quantkit.arch import tensors as arch_tensors

    specs = arch_tensors(config)
    planned = convert.plan(config, [t.name for t in specs], {t.name: t.shape for t in specs})
    types = tensor_types(file_type, planned, convert.hparams(config))
    return sum(_nbytes(types[p.name], p.shape) for p in planned)


def tensor_types(file_type: str, planned: list[convert.PlannedTensor], hp: convert.Hparams,
                 imatrix: bool = False) -> dict[str, str]:
    """GGUF tensor name -> ggml type in a `file_type` file."""
    return {p.name: mix.tensor_type(file_type, p.name, p.shape, n_layer=hp.n_layer, n_head=hp.n_head,
                                    n_head_kv=hp.n_head_kv, tied=hp.tied, arch=hp.arch_name, imatrix=imatrix)
            for p in planned}
