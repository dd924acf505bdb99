"""INT4 calibration through llm-compressor's sequential pipeline, for the gptq and awq backends.

llm-compressor calibrates layer by layer (one decoder layer's activations in memory at a time)
and writes compressed-tensors `pack-quantized`; quantkit then repacks the same integers and
scales into the AutoGPTQ or AutoAWQ layout when asked (layouts.py).

The model is loaded with compressed-tensors' disk offload: every weight stays on disk (links to
the source's safetensors in an offload folder beside the staging folder; the weights GPTQ or AWQ
rewrite are written there, in the compute dtype), and the sequential pipeline onloads one decoder
layer at a time to its device (CUDA when there is one, else the CPU). Memory is flat in model
depth and set by its width: the two largest tensors in the compute dtype while loading
(transformers materializes each tensor once on its way to disk), one layer's weights, Hessians and
the calibration activations while calibrating, one output shard (SHARD_SIZE) while saving. The
offload folder grows to about the quantized Linears' size in the compute dtype (on CPU twice a
BF16 source's) on the output's disk; it is removed at the end, on SIGTERM, and by the next run on
the same output after a kill. QUANTKIT_INT4_IN_RAM=1 loads the whole model in RAM instead (the
path before issue 16), kept to check that both give the same bytes (tests/test_int4_offload.py).

Torch's thread count changes GPTQ's rounding, so it is chosen here (`threads`) and recorded.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch

from quantkit.backends.int4 import layouts
from quantkit.backends.base import BackendResult, Progress
from quantkit.source import Source

IGNORE = ["lm_head"]
IN_RAM_ENV = "QUANTKIT_INT4_IN_RAM"  # "1": load the whole model in RAM (the path before disk offload)
SHARD_SIZE = "2GB"  # largest output shard: saving holds about one shard in memory, repacking (gptq, awq layouts) 1.5


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


def offload_bytes(source: Source) -> int:
    """Upper estimate of the offload folder: every weight in the compute dtype (0 with QUANTKIT_INT4_IN_RAM=1)."""
    if os.environ.get(IN_RAM_ENV) == "1":
        return 0
    stored = {torch.bfloat16: 2, torch.float16: 2, torch.float32: 4}[_source_dtype(source)]
    return source.weight_bytes * compute_dtype().itemsize // stored


def threads() -> int:
    """Torch threads for calibration: OMP_NUM_THREADS when set (the usual way to pin it; bench/identical.py
    sets 1), else the physical cores this process may run on (the fewer of the machine's physical cores
    and the CPUs in its affinity mask): hyperthreads add little to these matmuls, and threads beyond the
    CPUs a process may use (taskset, a cgroup cpuset) only contend."""
    import psutil

    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(allowed, psutil.cpu_count(logical=False) or allowed))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def offload_folder(staging: Path) -> Iterator[Path | None]:
    """The folder for the offloaded weights (None with QUANTKIT_INT4_IN_RAM=1), removed afterwards, also on
    SIGTERM. It lies beside the staging folder and is named after it, so the next run on the same output
    removes one that a kill left behind, as it removes the partial output."""
    from quantkit import output

    if os.environ.get(IN_RAM_ENV) == "1":
        yield None
        return
    folder = staging.with_name(staging.name + ".offload")

    def remove() -> None:
        shutil.rmtree(folder, ignore_errors=True)

    output.CHILDREN.append(remove)  # quantkit's SIGTERM handler calls these before it exits
    try:
        yield folder
    finally:
        remove()
        output.CHILDREN.remove(remove)


def load_model(path: Path, offload: Path | None):
    """The model in the compute dtype: whole in RAM (offload None), or with every weight on disk in
    `offload` (compressed-tensors' offload: nothing kept in CPU memory, onloaded layer by layer)."""
    from transformers import AutoModelForCausalLM

    if offload is None:
        return AutoModelForCausalLM.from_pretrained(path, dtype=compute_dtype())
    from compressed_tensors.offload import load_offloaded_model

    with load_offloaded_model():
        # "auto_offload": CPU and disk only, whatever accelerators there are; a CPU budget of 0 puts all on disk
        return AutoModelForCausalLM.from_pretrained(path, dtype=compute_dtype(), device_map="auto_offload",
                                                    max_memory={"cpu": 0}, offload_folder=str(offload))


def restore_dtype(model, dtype: torch.dtype) -> None:
    """Back to the source's dtype for what is stored as floats (embeddings, norms, head, scales);
    quantized Linear weights stay as computed: they are packed to integers on save. Parameters are
    listed without onloading them, then converted one at a time; one on disk is written again (an
    offloaded tensor keeps its dtype when updated in place), once for all modules that share it
    (tied embeddings)."""
    from compressed_tensors.offload import disable_onloading

    with disable_onloading():
        todo = [(mod, name, p) for mod in model.modules()
                for name, p in mod.named_parameters(recurse=False)
                if p.is_floating_point() and p.dtype != dtype
                and not (getattr(mod, "quantization_scheme", None) is not None and name == "weight")]
    written: dict[int, torch.Tensor] = {}  # id of an old offloaded tensor -> its replacement
    for mod, name, p in todo:
        if p.device.type != "meta":  # in memory: converted in place, which tied modules see too
            p.data = p.data.to(dtype)
        elif id(p) in written:
            with disable_onloading():  # share the replacement without copying it
                mod._parameters[name] = written[id(p)]
        else:
            value = getattr(mod, name).to(dtype)
            del mod._parameters[name]  # removes its file in the offload folder
            mod._parameters[name] = torch.nn.Parameter(value, requires_grad=p.requires_grad)
            with disable_onloading():
                written[id(p)] = mod._parameters[name]


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
    from transformers import AutoTokenizer

    from quantkit.libs import no_library_bars, quiet_llmcompressor, quiet_transformers
    from quantkit.text import load_text

    o, source, group = backend.options, plan.source, plan.group_size
    text, described = load_text(o.calibration, "calibration")
    quiet_transformers()
    quiet_llmcompressor()
    from llmcompressor import oneshot

    tok = AutoTokenizer.from_pretrained(source.path)
    data = calibration_dataset(tok, text, o.samples, o.seq_len)
    n_threads = threads()
    with offload_folder(staging) as offload, torch_threads(n_threads):
        with no_library_bars():
            model = load_model(source.path, offload)
        progress(source.weight_bytes // 10)
        ctx = awq_on_cpu() if backend.name == "awq" else contextlib.nullcontext()
        with ctx, no_library_bars():
            oneshot(model=model, dataset=data, recipe=modifiers(backend, group), num_calibration_samples=len(data),
                    max_seq_length=o.seq_len, pipeline="sequential", shuffle_calibration_samples=False)
        progress(source.weight_bytes * 8 // 10)
        restore_dtype(model, _source_dtype(source))
        with no_library_bars():
            model.save_pretrained(staging, save_compressed=True, max_shard_size=SHARD_SIZE)
    (staging / "recipe.yaml").unlink(missing_ok=True)
    params = {"bits": 4, "group_size": group, "group_size_requested": o.group_size,
              "symmetric": backend.symmetric, "layout": o.format, "samples": len(data), "seq_len": o.seq_len,
              "calibration": described, "calibration_dtype": str(compute_dtype()).removeprefix("torch."), "ignore": IGNORE,
              "threads": n_threads, "llmcompressor": _version("llmcompressor"), **backend.extra_parameters()}
    layouts.repack(staging, o.format, params)
    progress(source.weight_bytes - source.weight_bytes * 9 // 10)
    return BackendResult(method=backend.name, parameters=params, format=backend.format)


def _version(dist: str) -> str:
    from importlib import metadata

    return metadata.version(dist)
