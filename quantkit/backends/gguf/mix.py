"""Which ggml type each tensor gets in a GGUF file of a given type (llama.cpp's "type mixes").

Read from llama.cpp's src/llama-quant.cpp (`llama_ftype_get_default_type`,
`llama_tensor_get_type_impl`, `tensor_type_fallback`, `tensor_allows_quantization`)
for the file types quantkit encodes itself, so that our files hold the same type
per tensor as `llama-quantize` writes from the same model (tested against it).
IQ file types are left to llama.cpp's own quantizer (`--engine llamacpp`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gguf

FT = gguf.LlamaFileType

# File type name -> (general.file_type, the type most tensors get).
FILE_TYPES: dict[str, tuple[int, str]] = {
    "F16": (FT.MOSTLY_F16, "F16"),
    "BF16": (FT.MOSTLY_BF16, "BF16"),
    "Q8_0": (FT.MOSTLY_Q8_0, "Q8_0"),
    "Q4_0": (FT.MOSTLY_Q4_0, "Q4_0"),
    "Q4_1": (FT.MOSTLY_Q4_1, "Q4_1"),
    "Q5_0": (FT.MOSTLY_Q5_0, "Q5_0"),
    "Q5_1": (FT.MOSTLY_Q5_1, "Q5_1"),
    "Q2_K": (FT.MOSTLY_Q2_K, "Q2_K"),
    "Q3_K_S": (FT.MOSTLY_Q3_K_S, "Q3_K"),
    "Q3_K_M": (FT.MOSTLY_Q3_K_M, "Q3_K"),
    "Q3_K_L": (FT.MOSTLY_Q3_K_L, "Q3_K"),
    "Q4_K_S": (FT.MOSTLY_Q4_K_S, "Q4_K"),
    "Q4_K_M": (FT.MOSTLY_Q4_K_M, "Q4_K"),
    "Q5_K_S": (FT.MOSTLY_Q5_K_S, "Q5_K"),
    "Q5_K_M": (FT.MOSTLY_Q5_K_M, "Q5_K"),
    "Q6_K": (FT.MOSTLY_Q6_K, "Q6_K"),
}
UNQUANTIZED = {"F32", "F16", "BF16"}

# A type whose block does not divide a tensor's row length -> the type used instead.
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


@dataclass(frozen=True)
class Ctx:
    """What the rules look at: the tensor's layer, the model's shape, whether an imatrix is used."""

    layer: int
    n_layer: int
    gqa: int  # query heads per KV head
    imatrix: bool
    is_70b: bool


def _more_bits(c: Ctx) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third layer between."""
    n = c.n_layer
    return c.layer < n // 8 or c.layer >= 7 * n // 8 or (c.layer - n // 8) % 3 == 2


Rule = Callable[[Ctx], "str | None"]  # the type, or None to keep the file type's default


def _when(cond: Callable[[Ctx], bool], typ: str) -> Rule:
    return lambda c: typ if cond(c) else None


# File type -> tensor role -> rule. Roles as llama.cpp names them; a role absent keeps the default.
RULES: dict[str, dict[str, "Rule | str"]] = {
    "Q2_K": {"attn_v": lambda c: "Q4_K" if c.gqa >= 4 else "Q3_K", "ffn_down": "Q3_K", "attn_output": "Q3_K"},
    "Q3_K_M": {
        "attn_v": lambda c: "Q5_K" if c.layer < 2 else "Q4_K",
        "ffn_down": lambda c: "Q5_K" if c.layer < c.n_layer // 16 else "Q4_K",
        "attn_output": "Q4_K",
    },
    "Q3_K_L": {"attn_v": "Q5_K", "ffn_down": "Q5_K", "attn_output": "Q5_K"},
    "Q4_K_S": {"attn_v": _when(lambda c: c.layer < 4, "Q5_K"), "ffn_down": _when(lambda c: c.layer < c.n_layer // 8, "Q5_K")},
    "Q4_K_M": {"attn_v": _when(_more_bits, "Q6_K"), "ffn_down": _when(_more_bits, "Q6_K")},
    "Q5_K_M": {"attn_v": _when(_more_bits, "Q6_K"), "ffn_down": _when(_more_bits, "Q6_K")},
    # With an imatrix, the first eighth of ffn_down gets the type with a minimum ("guard against craziness").
    "Q4_0": {"ffn_down": _when(lambda c: c.imatrix and c.layer < c.n_layer // 8, "Q4_1")},
    "Q5_0": {"ffn_down": _when(lambda c: c.imatrix and c.layer < c.n_layer // 8, "Q5_1")},
}
# On Llama 70B (80 layers, grouped-query attention) attn_v gets at least Q5_K.
RAISE_70B_ATTN_V = {"Q3_K": "Q5_K", "Q4_K": "Q5_K"}


def role(gguf_name: str) -> str:
    """The tensor's role as llama.cpp's tensor_get_category sees it."""
    if gguf_name == "output.weight":
        return "output"
    if gguf_name == "token_embd.weight":
        return "token_embd"
    for r in ("attn_v", "attn_k", "attn_q", "attn_output", "ffn_up", "ffn_gate", "ffn_down"):
        if f".{r}." in gguf_name:
            return r
    return "other"


def layer_of(gguf_name: str) -> int:
    parts = gguf_name.split(".")
    return int(parts[1]) if parts[0] == "blk" else -1


def quantizable(gguf_name: str, shape: tuple[int, ...]) -> bool:
    """llama.cpp quantizes 2-D `*weight` tensors except norms; the rest keep their type (F32)."""
    return len(shape) >= 2 and gguf_name.endswith("weight") and "_norm.weight" not in gguf_name


def block_size(typ: str) -> int:
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[typ]][0]


def tensor_type(file_type: str, gguf_name: str, shape: tuple[int, ...], *, n_layer: int, n_head: int,
                n_head_kv: int, tied: bool, arch: str = "llama", imatrix: bool = False) -> str:
    """The ggml type of one tensor (shape in HF order: rows, row length) in a `file_type` file."""
    if not quantizable(gguf_name, shape):
        return "F32"
    default = FILE_TYPES[file_type][1]
    if default in UNQUANTIZED:
        return default
    r = role(gguf_name)
    cols = shape[-1]
    typ = default
    if r == "output" or (r == "token_embd" and tied):
        if cols % block_size(default):
            typ = "Q8_0"
        elif default != "Q8_0":
            typ = "Q6_K"
    else:
        c = Ctx(layer_of(gguf_name), n_layer, n_head // max(n_head_kv, 1), imatrix,
                is_70b=arch == "llama" and n_layer == 80 and n_head != n_head_kv)
        rule = RULES.get(file_type, {}).get(r)
        chosen = rule(c) if callable(rule) else rule
        typ = chosen or default
        if r == "attn_v" and c.is_70b:
            typ = RAISE_70B_ATTN_V.get(typ, typ)
    if cols % block_size(typ):
        typ = FALLBACK.get(typ, typ)
        if cols % block_size(typ):
            typ = "F16"
    return typ
