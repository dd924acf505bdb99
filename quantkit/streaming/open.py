"""Open any model quantkit reads as a LayerModel: detection by what the folder or file declares."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from quantkit import formats
from quantkit.errors import InputError
from quantkit.streaming.model import LayerModel
from quantkit.streaming.weights import (CompressedWeights, EXL2Weights, GGUFWeights, LegacyInt4Weights, Weights,
                                        headers_of)


def _config(folder: Path):
    from transformers import AutoConfig

    from quantkit.libs import quiet_transformers

    quiet_transformers()
    return AutoConfig.from_pretrained(folder)


def from_source(source, device: torch.device) -> LayerModel:
    """A resolved conversion source (quantkit/source.py): its safetensors headers are already read."""
    return LayerModel(Weights(source.headers), _config(source.path), device)


def open_model(path: Path, device: torch.device) -> LayerModel:
    """A checkpoint folder (plain, compressed-tensors, AutoGPTQ/AutoAWQ, EXL2) or one .gguf file;
    the format is told by loaders' detectors, the ones verify's checks use."""
    from quantkit import loaders

    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return _open_gguf(path, device)
    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    config = _config(path)
    if loaders._is_exl2(path):
        return _open_exl2(path, config, device)
    if loaders._is_int4_legacy(path):
        return LayerModel(LegacyInt4Weights(path, raw), config, device)
    if loaders._quantization_config(path).get("quant_method") == "compressed-tensors":
        return LayerModel(CompressedWeights(path, raw), config, device)
    w = Weights(headers_of(path))
    w.format = formats.config_format(raw) or w.format
    return LayerModel(w, config, device)


def _open_exl2(path: Path, config, device) -> LayerModel:
    from transformers import AutoModelForCausalLM

    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    outs = {k: m.out_features for k, m in meta.named_modules() if isinstance(m, torch.nn.Linear)}
    del meta
    return LayerModel(EXL2Weights(path, outs), config, device, keep_head=True)


def _open_gguf(path: Path, device) -> LayerModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    from quantkit.libs import quiet_gguf, quiet_transformers

    quiet_transformers()
    with quiet_gguf():
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    names = list(meta.state_dict())
    del meta
    w = GGUFWeights(path, names, config.to_dict(), config.num_hidden_layers)
    if getattr(config, "tie_word_embeddings", False) is False and "lm_head.weight" not in w.names:
        raise InputError(f"{path}: config declares an untied head but the file has no output.weight; re-convert it")
    return LayerModel(w, config, device)
