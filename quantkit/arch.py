"""Architecture facts from config.json alone: the architectures quantkit converts, the model's
dimensions and rope settings, and the weight tensors a Llama-family model has.

Used by source checks, the GGUF converter, `vram` (bytes per format without downloading weights)
and bench/ (synthetic checkpoints of real shapes).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    hf_name: str  # config.json's architectures[0]
    family: str  # the name used in tables and cards
    gguf_arch: str  # llama.cpp's general.architecture
    permute_qk: bool  # q/k rows are permuted into llama.cpp's rotary layout in GGUF


# The architectures quantkit converts.
ARCHITECTURES: dict[str, Architecture] = {a.hf_name: a for a in (
    Architecture("LlamaForCausalLM", "llama", "llama", True),
    Architecture("MistralForCausalLM", "mistral", "llama", True),
    Architecture("Qwen2ForCausalLM", "qwen2", "qwen2", False),
)}

# Linear layers inside each decoder layer: name -> (rows, cols) as functions of the dims.
LINEARS = {
    "self_attn.q_proj": lambda d: (d.heads * d.head_dim, d.hidden),
    "self_attn.k_proj": lambda d: (d.kv_heads * d.head_dim, d.hidden),
    "self_attn.v_proj": lambda d: (d.kv_heads * d.head_dim, d.hidden),
    "self_attn.o_proj": lambda d: (d.hidden, d.heads * d.head_dim),
    "mlp.gate_proj": lambda d: (d.intermediate, d.hidden),
    "mlp.up_proj": lambda d: (d.intermediate, d.hidden),
    "mlp.down_proj": lambda d: (d.hidden, d.intermediate),
}
# Families whose q/k/v projections carry a bias.
QKV_BIAS = {"qwen2"}


# config.json keys that must be whole numbers of at least 1 (the optional ones when present)
POSITIVE_INTS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
OPTIONAL_POSITIVE_INTS = ("num_key_value_heads", "head_dim", "max_position_embeddings")


def check_config(cfg: dict) -> None:
    """Refuse a config.json whose dimensions are not whole numbers of at least 1: one line naming the key."""
    from quantkit.errors import SourceError

    for key in POSITIVE_INTS + OPTIONAL_POSITIVE_INTS:
        if key not in cfg or (key in OPTIONAL_POSITIVE_INTS and cfg[key] is None):
            if key in POSITIVE_INTS:
                raise SourceError(f"config.json lacks {key}; pass a Llama-family config.json")
            continue
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SourceError(f"config.json has {key}: {v!r}, which is not a whole number of at least 1; fix or re-download it")


@dataclass(frozen=True)
class Dims:
    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    max_positions: int

    @classmethod
    def from_config(cls, cfg: dict) -> "Dims":
        check_config(cfg)
        heads = cfg["num_attention_heads"]
        return cls(
            model_type=cfg.get("model_type", "llama"),
            hidden=cfg["hidden_size"],
            intermediate=cfg["intermediate_size"],
            layers=cfg["num_hidden_layers"],
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            vocab=cfg["vocab_size"],
            tied=bool(cfg.get("tie_word_embeddings", False)),
            max_positions=cfg.get("max_position_embeddings", 0),
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


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    role: str  # "embedding", "head", "linear", "norm", "bias"


def tensors(cfg: dict) -> list[TensorSpec]:
    """Every weight tensor of a Llama-family checkpoint, in checkpoint order."""
    d = Dims.from_config(cfg)
    out = [TensorSpec("model.embed_tokens.weight", (d.vocab, d.hidden), "embedding")]
    bias = d.model_type in QKV_BIAS
    for n in range(d.layers):
        p = f"model.layers.{n}."
        out.append(TensorSpec(p + "input_layernorm.weight", (d.hidden,), "norm"))
        for name, shape in LINEARS.items():
            if name == "mlp.gate_proj":
                out.append(TensorSpec(p + "post_attention_layernorm.weight", (d.hidden,), "norm"))
            out.append(TensorSpec(p + name + ".weight", shape(d), "linear"))
            if bias and name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                out.append(TensorSpec(p + name + ".bias", (shape(d)[0],), "bias"))
    out.append(TensorSpec("model.norm.weight", (d.hidden,), "norm"))
    if not d.tied:
        out.append(TensorSpec("lm_head.weight", (d.vocab, d.hidden), "head"))
    return out
