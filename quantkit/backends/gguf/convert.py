"""Hugging Face config and tensors -> GGUF metadata, tensor names and tensor layout.

Written on the `gguf` package (its key names, writer and tensor-name map), following
what llama.cpp's loader reads for a llama-family model (src/llama-model.cpp and
convert_hf_to_gguf.py's LlamaModel / Qwen2Model, read for this, not copied).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gguf
import numpy as np

from quantkit.arch import ARCHITECTURES, Dims, rope
from quantkit.errors import SourceError

if TYPE_CHECKING:
    import torch

# HF tensors llama.cpp has no use for.
SKIPPED_SUFFIXES = (".rotary_emb.inv_freq",)
ROPE_FREQS = "rope_freqs.weight"


@dataclass(frozen=True)
class Hparams:
    """A config as the GGUF writer sees it: llama.cpp's architecture and the model's dimensions."""

    arch: gguf.MODEL_ARCH
    permute_qk: bool  # q/k rows permuted into llama.cpp's rotary layout
    dims: Dims

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


def hparams(config: dict) -> Hparams:
    arch_name = config["architectures"][0]
    a = ARCHITECTURES.get(arch_name)
    if a is None:
        raise SourceError(f"GGUF conversion does not support {arch_name} yet; supported: {', '.join(ARCHITECTURES)}")
    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    return Hparams(arch=by_name[a.gguf_arch], permute_qk=a.permute_qk, dims=Dims.from_config(config))


def llama3_rope_factors(config: dict) -> np.ndarray:
    """The per-frequency factors llama.cpp reads from `rope_freqs.weight` for llama3 rope scaling."""
    theta, s = rope(config)
    dim = hparams(config).dims.head_dim
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
    d = hparams(config).dims
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_file_type(int(file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(config.get("max_position_embeddings", 2048))
    w.add_embedding_length(d.hidden)
    w.add_block_count(d.layers)
    w.add_feed_forward_length(d.intermediate)
    w.add_head_count(d.heads)
    w.add_head_count_kv(d.kv_heads)
    w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    if config.get("head_dim"):
        w.add_key_length(d.head_dim)
        w.add_value_length(d.head_dim)
    w.add_vocab_size(d.vocab)
    w.add_rope_dimension_count(d.head_dim)
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
    d = hp.dims
    names = gguf.get_tensor_name_map(hp.arch, d.layers)
    out: list[PlannedTensor] = []
    if rope(config)[1].get("rope_type") == "llama3":
        out.append(PlannedTensor(None, ROPE_FREQS, (d.head_dim // 2,)))
    for hf in hf_names:
        if hf.endswith(SKIPPED_SUFFIXES):
            continue
        if hf == "lm_head.weight" and d.tied:
            continue  # llama.cpp uses token_embd for the output when output.weight is absent
        gname = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise SourceError(f"tensor {hf} has no GGUF name for {hp.arch_name}; is this a standard checkpoint?")
        heads = 0
        if hp.permute_qk and hf.endswith("q_proj.weight"):
            heads = d.heads
        elif hp.permute_qk and hf.endswith("k_proj.weight"):
            heads = d.kv_heads
        out.append(PlannedTensor(hf, gname, tuple(shapes[hf]), heads))
    return out


def permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved pairs, head by head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
