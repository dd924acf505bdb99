"""INT4 calibration through llm-compressor's sequential pipeline, for the gptq and awq backends.

llm-compressor calibrates layer by layer (one decoder layer's activations in memory at a time)
and writes compressed-tensors `pack-quantized`; quantkit then repacks the same integers and
scales into the AutoGPTQ or AutoAWQ layout when asked (layouts.py). The model itself
is loaded whole on CPU: GPTQ and AWQ need every layer's weights in memory, so this does not
stream.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

from quantkit.backends.int4 import layouts
from quantkit.backends.base import BackendResult, Progress
from quantkit.source import Source

IGNORE = ["lm_head"]


@contextlib.contextmanager
def awq_on_cpu() -> Iterator[None]:
    """llm-compressor 0.14's AWQ pins its cached activations (IntermediatesCache.pin_memory),
    which raises 'Cannot access accelerator device' without CUDA. Pinning only speeds
    host-to-GPU copies, so on a machine without CUDA it is skipped for the duration."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.cuda.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *a, **k: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


def compute_dtype() -> torch.dtype:
    """float32 on CPU (faster there than BF16 on CPUs without AMX; docs/performance.md), BF16 on GPU."""
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def _source_dtype(source: Source) -> torch.dtype:
    names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    return names.get(source.dtype_counts.most_common(1)[0][0], torch.bfloat16) if source.dtype_counts else torch.bfloat16


def restore_dtype(model, dtype: torch.dtype) -> None:
    """Back to the source's dtype for what is stored as floats (embeddings, norms, head, scales);
    quantized Linear weights stay as computed: they are packed to integers on save."""
    for mod in model.modules():
        quantized = getattr(mod, "quantization_scheme", None) is not None
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.is_floating_point() and p.dtype != dtype and not (quantized and name == "weight"):
                p.data = p.data.to(dtype)


def calibration_dataset(tokenizer, text: str, samples: int, seq_len: int):
    """`samples` rows of BOS + seq_len-1 consecutive tokens, evenly spaced over the whole text."""
    from datasets import Dataset

    from quantkit.text import token_rows

    rows = token_rows(tokenizer, text, samples, seq_len, "fewer {samples} / a shorter {seq_len}")
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * seq_len for _ in rows]})


def scheme(symmetric: bool, group_size: int) -> dict:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    # scales rounded to BF16 as they are computed, so the float32 calibration below
    # gives the scales a BF16 run would store, and FP16 holds them exactly (legacy layouts)
    args = dict(num_bits=4, type="int", symmetric=symmetric, strategy="group", group_size=group_size,
                scale_dtype=torch.bfloat16)
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**args))}


def modifiers(backend, group_size: int) -> list:
    """llm-compressor's recipe for this backend: GPTQ, AWQ then round-to-nearest, or round-to-nearest alone."""
    from llmcompressor.modifiers.quantization import QuantizationModifier

    groups = scheme(backend.symmetric, group_size)
    o = backend.options
    if backend.name == "gptq":
        from llmcompressor.modifiers.gptq import GPTQModifier

        return [GPTQModifier(config_groups=groups, ignore=IGNORE, dampening_frac=o.damping,
                             actorder=None if o.act_order == "none" else o.act_order)]
    if backend.name == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(n_grid=o.grid), QuantizationModifier(config_groups=groups, ignore=IGNORE)]
    return [QuantizationModifier(config_groups=groups, ignore=IGNORE)]


def run(backend, plan, staging: Path, progress: Progress) -> BackendResult:
    """Calibrate and quantize `plan.source` with `backend`'s options; write the artifact into staging."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantkit.libs import no_library_bars, quiet_llmcompressor, quiet_transformers
    from quantkit.text import load_text

    o, source, group = backend.options, plan.source, plan.group_size
    text, described = load_text(o.calibration, "calibration")
    quiet_transformers()
    quiet_llmcompressor()
    from llmcompressor import oneshot

    tok = AutoTokenizer.from_pretrained(source.path)
    data = calibration_dataset(tok, text, o.samples, o.seq_len)
    with no_library_bars():
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=compute_dtype())
    progress(source.weight_bytes // 10)
    ctx = awq_on_cpu() if backend.name == "awq" else contextlib.nullcontext()
    with ctx, no_library_bars():
        oneshot(model=model, dataset=data, recipe=modifiers(backend, group), num_calibration_samples=len(data),
                max_seq_length=o.seq_len, pipeline="sequential", shuffle_calibration_samples=False)
    progress(source.weight_bytes * 8 // 10)
    store_dtype = _source_dtype(source)
    restore_dtype(model, store_dtype)
    with no_library_bars():
        model.save_pretrained(staging, save_compressed=True)
    (staging / "recipe.yaml").unlink(missing_ok=True)
    params = {"bits": 4, "group_size": group, "group_size_requested": o.group_size,
              "symmetric": backend.symmetric, "layout": o.format, "samples": len(data), "seq_len": o.seq_len,
              "calibration": described, "calibration_dtype": str(compute_dtype()).removeprefix("torch."), "ignore": IGNORE,
              "llmcompressor": _version("llmcompressor"), **backend.extra_parameters()}
    layouts.repack(staging, o.format, params)
    progress(source.weight_bytes - source.weight_bytes * 9 // 10)
    return BackendResult(method=backend.name, parameters=params, format=backend.format)


def _version(dist: str) -> str:
    from importlib import metadata

    return metadata.version(dist)
