"""FP8-dynamic in compressed-tensors format, streamed tensor by tensor.

Same output as llm-compressor's `model_free_ptq(scheme="FP8_DYNAMIC")`, which
loads a whole shard at a time (7 GiB RSS on Llama-3.1-8B's 5 GB shards). Here a
shard is read and written one tensor at a time, so memory holds one weight
matrix whatever the shard size. The config block and tensor selection come from
compressed-tensors itself; the arithmetic is the library's (bf16 division of the
weight by its per-row absmax/448, clamped, cast to float8_e4m3fn), and a test
checks the result equals model_free_ptq's, tensor for tensor.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from quantkit.libs import quiet_llmcompressor
from quantkit.backends.base import BackendResult, Progress
from quantkit.source import Source
from quantkit.stio import DTYPES, TORCH_TO_ST, HashingReader, PlannedTensor, StreamWriter

SCHEME = "FP8_DYNAMIC"
# Modules kept in their source dtype, as llm-compressor names them in the config.
# Embeddings must be listed: FP8 embeddings are loaded wrongly by transformers.
IGNORE = ["lm_head", "re:.*embed_tokens"]
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
ROWS_PER_CHUNK = 2048


def write_quantization_config(folder: Path) -> None:
    """Add quantization_config to folder/config.json with llm-compressor's own writer,
    from the scheme model_free_ptq builds, so the block is exactly what it writes."""
    quiet_llmcompressor()  # before the imports below, which log at import time
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.config import CompressionFormat
    from llmcompressor.entrypoints.model_free.save_utils import update_config
    from llmcompressor.entrypoints.model_free.validate import validate_config

    config = validate_config(None, SCHEME, IGNORE)
    for scheme in config.config_groups.values():
        scheme.format = CompressionFormat(scheme.format or infer_module_format(torch.nn.Linear, scheme))
    update_config(folder, config)


def quantized_names(names: list[str]) -> set[str]:
    from compressed_tensors.utils import match_quantizable_tensors

    return {name for _, name in match_quantizable_tensors(dict.fromkeys(names), IGNORE, ["Linear"])}


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 weights and per-row scales, in the weight's own dtype as compressed-tensors computes them."""
    scale = w.abs().amax(dim=1, keepdim=True) / torch.tensor(FP8_MAX, dtype=w.dtype)
    eps = torch.tensor(torch.finfo(w.dtype).eps, dtype=w.dtype)
    scale = torch.where(scale == 0, eps, scale)
    q = (w / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


class FP8Dynamic:
    name = "fp8"
    suffix = "FP8-Dynamic"
    format = "compressed-tensors FP8"

    def estimate_bytes(self, source: Source) -> int:
        return source.weight_bytes + (1 << 20)

    def run(self, source: Source, staging: Path, progress: Progress) -> BackendResult:
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
            reader = HashingReader(header)
            try:
                for t in header.ordered():
                    if t.name in targets:
                        self._quantize_one(reader, writer, t)
                    else:
                        writer.begin(t.name)
                        for chunk in reader.chunks(t):
                            writer.write_bytes(chunk)
                    progress(t.nbytes)
                source_hashes[src_file.name] = reader.finish()
                file_hashes[out_name] = writer.close()
            except BaseException:
                writer.abort()
                raise
            total += sum(p.nbytes for p in plan)
            weight_map.update({p.name: out_name for p in plan})
        (staging / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n"
        )
        (staging / "config.json").write_text(json.dumps(source.config, indent=2) + "\n")
        write_quantization_config(staging)
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
            format=self.format,
        )

    @staticmethod
    def _quantize_one(reader: HashingReader, writer: StreamWriter, t) -> None:
        if len(t.shape) != 2 or DTYPES[t.dtype][0] not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"{t.name}: cannot quantize a {t.dtype} tensor of shape {t.shape}")
        w = reader.tensor(t)
        scales = []
        writer.begin(t.name)
        for r in range(0, t.shape[0], ROWS_PER_CHUNK):
            q, s = quantize_rows(w[r : r + ROWS_PER_CHUNK])
            writer.write_bytes(memoryview(q.view(torch.uint8).reshape(-1).numpy()))
            scales.append(s)
        del w
        scale = torch.cat(scales) if scales else torch.empty((0, 1), dtype=DTYPES[t.dtype][0])
        assert TORCH_TO_ST[scale.dtype] == t.dtype and math.prod(scale.shape) == t.shape[0]
        writer.write(t.name + "_scale", scale)
