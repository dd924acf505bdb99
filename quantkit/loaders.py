"""The loader registry verify uses: any artifact quantkit reads -> a model that gives logits.

Each entry detects its format from the path and loads a `Scorer`; later formats
(GPTQ/AWQ layouts, EXL2) add one function and one line in LOADERS.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from quantkit import formats
from quantkit.errors import InputError
from quantkit.libs import no_library_bars, quiet_transformers


@dataclass
class Scorer:
    path: Path
    format: str
    size_bytes: int  # bytes of the weight files
    activations: str  # how activations are treated at run time
    vocab_size: int
    logits: Callable[[list[int]], torch.Tensor]  # token ids -> [len, vocab] float32


def _weights_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _hf_logits(model) -> Callable[[list[int]], torch.Tensor]:
    @torch.inference_mode()
    def run(ids: list[int]) -> torch.Tensor:
        return model(torch.tensor([ids])).logits[0].float()

    return run


def _load_transformers(path: Path, **kw):
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    with no_library_bars(), torch.inference_mode():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw).eval()
        model(torch.tensor([[0]]))  # compressed-tensors decompresses on the first forward
    return model


def load_hf(path: Path) -> Scorer:
    """Plain or compressed-tensors checkpoints: transformers loads both on CPU."""
    config = json.loads((path / "config.json").read_text())
    fmt = formats.config_format(config) or "Hugging Face checkpoint"
    qc = config.get("quantization_config") or {}
    acts = "unquantized (float32 compute)"
    for group in (qc.get("config_groups") or {}).values():
        ia = group.get("input_activations")
        if ia and ia.get("dynamic"):
            acts = (f"{ia.get('type')}{ia.get('num_bits')} per-{ia.get('strategy')} dynamic on Linear inputs, "
                    "applied by compressed-tensors inside transformers' forward, as vLLM does")
    model = _load_transformers(path)
    return Scorer(path, fmt, _weights_size(path), acts, model.config.vocab_size, _hf_logits(model))


def load_gguf(path: Path) -> Scorer:
    """GGUF through transformers' GGUF loader (dequantized to float32: weight error only)."""
    f = _one_gguf(path)
    model = _load_transformers(f.parent, gguf_file=f.name)
    return Scorer(f, "gguf", f.stat().st_size, "unquantized (float32 compute, weights dequantized)",
                  model.config.vocab_size, _hf_logits(model))


def load_gguf_llamacpp(path: Path) -> Scorer:
    """GGUF in llama.cpp's own runtime (llama-cpp-python, CPU): its kernels, its activation handling."""
    from quantkit.backends.gguf import llamacpp

    f = _one_gguf(path)
    llm = llamacpp.load(f, n_ctx=4096)

    def run(ids: list[int]) -> torch.Tensor:
        if len(ids) > llm.n_ctx():
            raise InputError(f"--ctx {len(ids)} is longer than quantkit's llama.cpp context ({llm.n_ctx()}); use a shorter --ctx")
        llm.reset()
        llm.eval(ids)
        return torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))

    return Scorer(f, "gguf (llama.cpp)", f.stat().st_size, "llama.cpp CPU kernels (activations quantized as llama.cpp does)",
                  llm.n_vocab(), run)


def _one_gguf(path: Path) -> Path:
    files = [path] if path.is_file() else sorted(path.glob("*.gguf"))
    if len(files) != 1:
        raise InputError(f"{path} holds {len(files)} .gguf files; pass the one to verify")
    return files[0]


def _is_gguf(path: Path) -> bool:
    return (path.is_file() and path.suffix == ".gguf") or (
        path.is_dir() and not (path / "config.json").exists() and any(path.glob("*.gguf")))


def _is_hf(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


# (detect, load) in order: the first that detects the path loads it.
LOADERS: list[tuple[Callable[[Path], bool], Callable[[Path], Scorer]]] = [
    (_is_gguf, load_gguf),
    (_is_hf, load_hf),
]


# Runtimes a GGUF can be scored in: transformers (dequantized, float32) or llama.cpp itself.
GGUF_RUNTIMES = {"transformers": load_gguf, "llamacpp": load_gguf_llamacpp}


def load(path: Path, gguf_runtime: str = "transformers") -> Scorer:
    path = Path(path)
    if gguf_runtime not in GGUF_RUNTIMES:
        raise InputError(f"--runtime {gguf_runtime}: choose {' or '.join(GGUF_RUNTIMES)}")
    if not path.exists():
        raise InputError(f"{path}: no such artifact; pass a folder quantkit wrote or a .gguf file")
    if gguf_runtime != "transformers" and _is_gguf(path):
        return GGUF_RUNTIMES[gguf_runtime](path)
    for detect, loader in LOADERS:
        if detect(path):
            return loader(path)
    raise InputError(f"{path} is neither a checkpoint folder (config.json) nor a .gguf file; pass an artifact quantkit reads")
