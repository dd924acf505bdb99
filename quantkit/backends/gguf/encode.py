"""ggml type name -> encoder of rows into that type's bytes.

Every quantized type is encoded by quantkit's numpy ports of llama.cpp's reference
quantizers (kquants.py, kquants_qx.py), tested block for block against
llama.cpp's own `ggml_quantize_chunk` (tests/test_gguf_kquants*.py).
"""
from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Callable

import gguf
import numpy as np

if TYPE_CHECKING:
    import torch

Encoder = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


@cache
def encoders() -> dict[str, Encoder]:
    from quantkit.backends.gguf import kquants, kquants_qx

    return {**kquants.ENCODERS, **kquants_qx.ENCODERS}


# Values encoded per call: bounds the encoders' temporaries (a few times this many float32s).
CHUNK_VALUES = 1 << 20
TORCH_TYPES = ("F32", "F16", "BF16")  # written by from_torch


def from_torch(typ: str, rows: torch.Tensor) -> np.ndarray:
    """F32/F16/BF16 straight from the source tensor's rows (no float32 detour; BF16 from a BF16
    source is its own bytes). torch rounds to nearest even, as ggml does."""
    import torch

    dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[typ]
    return rows.to(dtype).contiguous().view(torch.uint8).numpy().reshape(rows.shape[0], -1)


def row_bytes(typ: str, n_per_row: int) -> int:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[typ]]
    return n_per_row // block * size


def rows_per_chunk(n_per_row: int) -> int:
    return max(1, CHUNK_VALUES // max(n_per_row, 1))


def encode(typ: str, rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """uint8 [nrows, row_bytes] for float32 rows [nrows, n_per_row]."""
    return encoders()[typ](rows, imatrix)
