"""INT4 weight-only (W4A16) GPTQ and AWQ through llm-compressor's sequential pipeline.

llm-compressor calibrates layer by layer (one decoder layer's activations in
memory at a time) and writes compressed-tensors `pack-quantized`; quantkit then
repacks the same integers and scales into the AutoGPTQ or AutoAWQ layout when
asked (quantkit/layouts.py). The model itself is loaded whole on CPU: GPTQ and
AWQ need every layer's weights in memory, so this backend does not stream.

Group size: every quantized Linear must have in-features divisible by the group
size. When the requested size (128) does not divide them all (SmolLM2-135M's
hidden size is 576), quantkit uses the largest group size below it that divides
every such layer among 64 and 32 (64 for SmolLM2; the sizes INT4 kernels take), one size for the
whole model so that all three layouts can express it; the manifest records
requested and used sizes, and the CLI says so.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

from quantkit import layouts
from quantkit.backends.base import BackendResult, Progress
from quantkit.errors import InputError
from quantkit.formats import group_size_for
from quantkit.source import Source

IGNORE = ["lm_head"]


def linear_in_features(source: Source) -> list[int]:
    """In-features of every Linear weight llm-compressor will quantize (2-D, not embeddings/lm_head/norms)."""
    out = []
    for h in source.headers.values():
        for t in h.tensors.values():
            module, _, param = t.name.rpartition(".")
            if param == "weight" and len(t.shape) == 2 and not module.endswith(("embed_tokens", "lm_head", "norm")):
                out.append(t.shape[1])
    return out


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
    """float32 on CPU (BF16 matmuls there are emulated: 8.5x slower measured on this machine), BF16 on GPU."""
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

    rows = token_rows(tokenizer, text, samples, seq_len, "fewer --samples / a shorter --seq-len")
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * seq_len for _ in rows]})


class _Int4:
    name = ""
    suffix = ""
    symmetric = True

    def __init__(self, group_size: int = 128, samples: int = 128, seq_len: int = 512, damping: float = 0.01,
                 act_order: str = "static", layout: str = "compressed-tensors", calibration: str | None = None,
                 n_grid: int = 20):
        if layout not in layouts.LAYOUTS:
            raise InputError(f"--format {layout}: choose one of {', '.join(layouts.LAYOUTS)}")
        if act_order == "group":
            raise InputError("--act-order group (g_idx) is not supported by llm-compressor 0.14, which orders "
                             "only statically; use --act-order static (the default) or none")
        if act_order not in ("static", "none"):
            raise InputError(f"--act-order {act_order}: choose static or none")
        self.group_size, self.samples, self.seq_len = group_size, samples, seq_len
        self.damping, self.act_order, self.layout, self.calibration = damping, act_order, layout, calibration
        self.n_grid = n_grid

    @property
    def format(self) -> str:
        return layouts.LAYOUTS[self.layout].describe

    def estimate_bytes(self, source: Source) -> int:
        return source.weight_bytes // 2 + (1 << 20)

    def check(self, source: Source) -> list[str]:
        """Validate options against the source before any work; choose the group size."""
        layouts.LAYOUTS[self.layout].check(self)
        in_features = linear_in_features(source)
        self.group = group_size_for(in_features, self.group_size)
        if self.group != self.group_size:
            return [f"group size {self.group_size} does not divide every layer's input size "
                    f"({', '.join(map(str, sorted(set(in_features))))}); using {self.group}, "
                    "the largest power of two that does (recorded in quantkit.json)"]
        return []

    def scheme(self, group_size: int) -> dict:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

        # scales rounded to BF16 as they are computed, so the float32 calibration below
        # gives the scales a BF16 run would store, and FP16 holds them exactly (legacy layouts)
        args = dict(num_bits=4, type="int", symmetric=self.symmetric, strategy="group", group_size=group_size,
                    scale_dtype=torch.bfloat16)
        return {"group_0": QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**args))}

    def recipe(self, group_size: int) -> list:
        raise NotImplementedError

    def run(self, source: Source, staging: Path, progress: Progress) -> BackendResult:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from quantkit.libs import no_library_bars, quiet_llmcompressor, quiet_transformers
        from quantkit.text import load_text

        group = self.group
        text, described = load_text(self.calibration, "calibration")
        quiet_transformers()
        quiet_llmcompressor()
        from llmcompressor import oneshot

        tok = AutoTokenizer.from_pretrained(source.path)
        data = calibration_dataset(tok, text, self.samples, self.seq_len)
        with no_library_bars():
            model = AutoModelForCausalLM.from_pretrained(source.path, dtype=compute_dtype())
        progress(source.weight_bytes // 10)
        ctx = awq_on_cpu() if self.name == "awq" else contextlib.nullcontext()
        with ctx, no_library_bars():
            oneshot(model=model, dataset=data, recipe=self.recipe(group), num_calibration_samples=len(data),
                    max_seq_length=self.seq_len, pipeline="sequential", shuffle_calibration_samples=False)
        progress(source.weight_bytes * 8 // 10)
        store_dtype = _source_dtype(source)
        restore_dtype(model, store_dtype)
        with no_library_bars():
            model.save_pretrained(staging, save_compressed=True)
        (staging / "recipe.yaml").unlink(missing_ok=True)
        params = {"bits": 4, "group_size": group, "group_size_requested": self.group_size,
                  "symmetric": self.symmetric, "layout": self.layout, "samples": len(data), "seq_len": self.seq_len,
                  "calibration": described, "calibration_dtype": str(compute_dtype()).removeprefix("torch."), "ignore": IGNORE, "llmcompressor": _version("llmcompressor"),
                  **self.extra_parameters()}
        layouts.repack(staging, self.layout, params)
        progress(source.weight_bytes - source.weight_bytes * 9 // 10)
        return BackendResult(method=self.name, parameters=params, format=self.format)

    def extra_parameters(self) -> dict:
        return {}


def _version(dist: str) -> str:
    from importlib import metadata

    return metadata.version(dist)


class GPTQ(_Int4):
    """W4A16 symmetric, GPTQ (Hessian-based error feedback)."""
    name = "gptq"
    suffix = "GPTQ-INT4"
    symmetric = True

    def recipe(self, group_size: int) -> list:
        from llmcompressor.modifiers.gptq import GPTQModifier

        return [GPTQModifier(config_groups=self.scheme(group_size), ignore=IGNORE, dampening_frac=self.damping,
                             actorder=None if self.act_order == "none" else self.act_order)]

    def extra_parameters(self) -> dict:
        return {"damping": self.damping, "act_order": self.act_order}


class AWQ(_Int4):
    """W4A16 asymmetric with zero points: AWQ activation-aware scaling, then round-to-nearest."""
    name = "awq"
    suffix = "AWQ-INT4"
    symmetric = False

    def recipe(self, group_size: int) -> list:
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(n_grid=self.n_grid), QuantizationModifier(config_groups=self.scheme(group_size), ignore=IGNORE)]

    def extra_parameters(self) -> dict:
        return {"n_grid": self.n_grid}


class RTN(_Int4):
    """Plain round-to-nearest of the same scheme, no calibration: the baseline GPTQ and AWQ must beat
    (bench/int4.py, tests). Not a CLI command."""
    name = "rtn"
    suffix = "RTN-INT4"

    def __init__(self, symmetric: bool = True, **kw):
        super().__init__(**{"samples": 1, "seq_len": 64, **kw})
        self.symmetric = symmetric

    def recipe(self, group_size: int) -> list:
        from llmcompressor.modifiers.quantization import QuantizationModifier

        return [QuantizationModifier(config_groups=self.scheme(group_size), ignore=IGNORE)]
