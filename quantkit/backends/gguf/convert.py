"""Hugging Face config and tensors -> GGUF metadata, tensor names and tensor layout.

Written on the `gguf` package (its key names, writer and tensor-name map), following
what llama.cpp's loader reads for a llama-family model (src/llama-model.cpp and
convert_hf_to_gguf.py's LlamaModel / Qwen2Model, read for this, not copied).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import gguf
import numpy as np
import torch

from quantkit.errors import SourceError

# HF architecture -> (GGUF architecture, q/k rows permuted into llama.cpp's rotary layout).
ARCHITECTURES = {
    "LlamaForCausalLM": (gguf.MODEL_ARCH.LLAMA, True),
    "MistralForCausalLM": (gguf.MODEL_ARCH.LLAMA, True),
    "Qwen2ForCausalLM": (gguf.MODEL_ARCH.QWEN2, False),
}
# HF tensors llama.cpp has no use for.
SKIPPED_SUFFIXES = (".rotary_emb.inv_freq",)
ROPE_FREQS = "rope_freqs.weight"


@dataclass(frozen=True)
class Hparams:
    arch: gguf.MODEL_ARCH
    permute_qk: bool
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    hidden: int
    vocab: int
    tied: bool

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


def hparams(config: dict) -> Hparams:
    arch_name = config["architectures"][0]
    if arch_name not in ARCHITECTURES:
        raise SourceError(f"GGUF conversion does not support {arch_name} yet; supported: {', '.join(ARCHITECTURES)}")
    arch, permute = ARCHITECTURES[arch_name]
    n_head = config["num_attention_heads"]
    return Hparams(
        arch=arch, permute_qk=permute, n_layer=config["num_hidden_layers"], n_head=n_head,
        n_head_kv=config.get("num_key_value_heads") or n_head,
        head_dim=config.get("head_dim") or config["hidden_size"] // n_head,
        hidden=config["hidden_size"], vocab=config["vocab_size"],
        tied=bool(config.get("tie_word_embeddings", False)),
    )


def rope(config: dict) -> tuple[float, dict]:
    """(rope_theta, scaling parameters or {}) from transformers 4 (`rope_theta`, `rope_scaling`)
    or transformers 5 (`rope_parameters`) configs."""
    params = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or {})
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    merged = {**scaling, **params}
    kind = merged.get("rope_type", merged.get("type", "default"))
    return float(theta), ({} if kind in (None, "default") else {**merged, "rope_type": kind})


def llama3_rope_factors(config: dict) -> np.ndarray:
    """The per-frequency factors llama.cpp reads from `rope_freqs.weight` for llama3 rope scaling."""
    theta, s = rope(config)
    hp = hparams(config)
    dim = hp.head_dim
    factor = s.get("factor", 8.0)
    low, high = s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    orig = s.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    low_wavelen, high_wavelen = orig / low, orig / high
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (orig / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def add_metadata(w: gguf.GGUFWriter, config: dict, name: str, file_type: int) -> list[str]:
    """Every general.* and <arch>.* key llama.cpp reads for this model; returns notices."""
    notices = []
    hp = hparams(config)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_file_type(int(file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(config.get("max_position_embeddings", 2048))
    w.add_embedding_length(hp.hidden)
    w.add_block_count(hp.n_layer)
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_head_kv)
    w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    if config.get("head_dim"):
        w.add_key_length(hp.head_dim)
        w.add_value_length(hp.head_dim)
    w.add_vocab_size(hp.vocab)
    w.add_rope_dimension_count(hp.head_dim)
    theta, scaling = rope(config)
    w.add_rope_freq_base(theta)
    kind = scaling.get("rope_type")
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(scaling["factor"])
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(scaling["factor"])
        w.add_rope_scaling_orig_ctx_len(scaling["original_max_position_embeddings"])
    elif kind not in (None, "llama3"):
        raise SourceError(f"rope scaling type {kind!r} is not supported by quantkit's GGUF writer yet")
    if config.get("sliding_window") and config.get("use_sliding_window"):
        notices.append("the source uses sliding-window attention; llama.cpp's llama architecture ignores it")
    return notices


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the GGUF file: where it comes from and how it is laid out."""

    hf_name: str | None  # None for tensors quantkit computes (rope_freqs)
    name: str  # GGUF name
    shape: tuple[int, ...]  # HF order: rows, row length
    permute_heads: int = 0  # >0: permute rows for llama.cpp's rotary layout with this many heads


def plan(config: dict, hf_names: list[str], shapes: dict[str, tuple[int, ...]]) -> list[PlannedTensor]:
    """The GGUF tensors, in the order the source delivers them (so they can be streamed)."""
    hp = hparams(config)
    names = gguf.get_tensor_name_map(hp.arch, hp.n_layer)
    out: list[PlannedTensor] = []
    if rope(config)[1].get("rope_type") == "llama3":
        out.append(PlannedTensor(None, ROPE_FREQS, (hp.head_dim // 2,)))
    for hf in hf_names:
        if hf.endswith(SKIPPED_SUFFIXES):
            continue
        if hf == "lm_head.weight" and hp.tied:
            continue  # llama.cpp uses token_embd for the output when output.weight is absent
        gname = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise SourceError(f"tensor {hf} has no GGUF name for {hp.arch_name}; is this a standard checkpoint?")
        heads = 0
        if hp.permute_qk and hf.endswith("q_proj.weight"):
            heads = hp.n_head
        elif hp.permute_qk and hf.endswith("k_proj.weight"):
            heads = hp.n_head_kv
        out.append(PlannedTensor(hf, gname, tuple(shapes[hf]), heads))
    return out


def permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved pairs, head by head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
