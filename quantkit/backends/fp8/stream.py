"""FP8-dynamic in compressed-tensors format, streamed tensor by tensor.

Same output as llm-compressor's `model_free_ptq(scheme="FP8_DYNAMIC")`, which
loads a whole shard at a time (docs/performance.md compares the two). Here a
shard is read and written one tensor at a time, so memory holds one weight
matrix whatever the shard size. The config block and tensor selection come from
compressed-tensors itself; the arithmetic is the library's (bf16 division of the
weight by its per-row absmax/448, clamped, cast to float8_e4m3fn), and a test
checks the result equals model_free_ptq's, tensor for tensor.
"""
from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import torch

from quantkit import output
from quantkit.backends.base import BackendResult, Progress
from quantkit.source import Source
from quantkit.stio import PlannedTensor, StreamWriter, shard_names, transcribe

SCHEME = "FP8_DYNAMIC"
# Modules kept in their source dtype, as llm-compressor names them in the config.
# Embeddings must be listed: FP8 embeddings are loaded wrongly by transformers.
IGNORE = ["lm_head", "re:.*embed_tokens"]
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
ROWS_PER_CHUNK = 256  # rows quantized at a time: cache-sized (docs/performance.md)
FORMAT = "compressed-tensors FP8"


def _float8_args(strategy: str, dynamic: bool) -> dict:
    return {"actorder": None, "block_structure": None, "dynamic": dynamic, "group_size": None, "num_bits": 8,
            "observer": None, "observer_kwargs": {}, "scale_dtype": None, "strategy": strategy,
            "symmetric": True, "type": "float", "zp_dtype": None}


# The quantization_config block llm-compressor's model_free_ptq writes for FP8_DYNAMIC
# (compressed-tensors 0.19). Kept as data rather than built with the library at run
# time because importing compressed-tensors is slow (docs/performance.md); tests compare
# it with model_free_ptq's output.
QUANTIZATION_CONFIG = {
    "config_groups": {
        SCHEME: {
            "format": "float-quantized",
            "input_activations": _float8_args("token", dynamic=True),
            "output_activations": None,
            "targets": ["Linear"],
            "weights": _float8_args("channel", dynamic=False),
        }
    },
    "format": "float-quantized",
    "global_compression_ratio": None,
    "ignore": IGNORE,
    "kv_cache_scheme": None,
    "quant_method": "compressed-tensors",
    "quantization_status": "compressed",
    "transform_config": {},
}


def quantization_config() -> dict:
    return {**QUANTIZATION_CONFIG, "version": metadata.version("compressed-tensors")}


def quantized_names(names: list[str]) -> set[str]:
    """The tensors compressed-tensors' match_quantizable_tensors selects for targets=["Linear"]:
    `<module>.weight` of every module not named like a norm and not in IGNORE
    (plain names match exactly, `re:` patterns with re.match)."""
    out = set()
    for name in names:
        module, _, param = name.rpartition(".")
        if param != "weight" or module.endswith("norm"):
            continue
        if any(re.match(p[3:], module) if p.startswith("re:") else p == module for p in IGNORE):
            continue
        out.add(name)
    return out


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 weights and per-row scales, in the weight's own dtype as compressed-tensors computes them."""
    scale = w.abs().amax(dim=1, keepdim=True) / torch.tensor(FP8_MAX, dtype=w.dtype)
    eps = torch.tensor(torch.finfo(w.dtype).eps, dtype=w.dtype)
    scale = torch.where(scale == 0, eps, scale)
    q = (w / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def write(source: Source, staging: Path, progress: Progress) -> BackendResult:
    """Write the FP8-dynamic artifact of `source` into staging, one tensor at a time."""
    # One torch thread: the reader and writer threads (file I/O, sha256) use the other core,
    # and OpenMP workers spin-waiting beside them cost more than they give (docs/performance.md).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _write(source, staging, progress)
    finally:
        torch.set_num_threads(threads)


def _write(source: Source, staging: Path, progress: Progress) -> BackendResult:
    all_names = [n for h in source.headers.values() for n in h.tensors]
    targets = quantized_names(all_names)
    outs = shard_names(len(source.weight_files))
    weight_map: dict[str, str] = {}
    file_hashes: dict[str, str] = {}
    source_hashes: dict[str, str] = {}
    total = 0
    for src_file, out_name in zip(source.weight_files, outs):
        header = source.headers[src_file.name]
        plan = []
        for t in header.ordered():
            if t.name in targets:
                plan.append(PlannedTensor(t.name, "F8_E4M3", t.shape))
                plan.append(PlannedTensor(t.name + "_scale", t.dtype, (t.shape[0], 1)))
            else:
                plan.append(PlannedTensor(t.name, t.dtype, t.shape))
        writer = StreamWriter(staging / out_name, plan, {"format": "pt"})
        source_hashes[src_file.name], file_hashes[out_name] = transcribe(
            header, writer, targets, lambda t, w, writer=writer: _quantize_one(writer, t, w), progress)
        total += sum(p.nbytes for p in plan)
        weight_map.update({p.name: out_name for p in plan})
    output.write_text_atomic(staging / "model.safetensors.index.json",
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n"
    )
    config = {**source.config, "quantization_config": quantization_config()}
    output.write_text_atomic(staging / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    return BackendResult(
        method="fp8-dynamic",
        parameters={
            "scheme": SCHEME,
            "weights": "float8_e4m3fn, symmetric, one scale per output channel",
            "activations": "float8_e4m3fn, dynamic, one scale per token (computed at run time)",
            "ignore": IGNORE,
            "quantized_tensors": len(targets),
        },
        file_hashes=file_hashes,
        source_hashes=source_hashes,
        format=FORMAT,
    )


def _quantize_one(writer: StreamWriter, t, w: torch.Tensor) -> None:
    if len(t.shape) != 2 or w.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"{t.name}: cannot quantize a {t.dtype} tensor of shape {t.shape}")
    scales = []
    writer.begin(t.name)
    for r in range(0, t.shape[0], ROWS_PER_CHUNK):
        q, s = quantize_rows(w[r : r + ROWS_PER_CHUNK])
        writer.write_bytes(memoryview(q.view(torch.uint8).reshape(-1).numpy()))
        scales.append(s)
    scale = torch.cat(scales) if scales else torch.empty((0, 1), dtype=w.dtype)
    writer.write(t.name + "_scale", scale)
