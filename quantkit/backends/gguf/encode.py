"""ggml type name -> encoder of float32 rows into that type's bytes.

Every quantized type is encoded by quantkit's numpy ports of llama.cpp's reference
quantizers (kquants.py, kquants_qx.py), tested block for block against
llama.cpp's own `ggml_quantize_chunk` (tests/test_gguf_kquants*.py).
"""
from __future__ import annotations

from functools import cache
from typing import Callable

import gguf
import numpy as np
import torch

Encoder = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


def _f32(rows: np.ndarray, imatrix=None) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype="<f4").view(np.uint8).reshape(rows.shape[0], -1)


def _f16(rows: np.ndarray, imatrix=None) -> np.ndarray:
    return np.ascontiguousarray(rows.astype("<f2")).view(np.uint8).reshape(rows.shape[0], -1)


def _bf16(rows: np.ndarray, imatrix=None) -> np.ndarray:
    # torch rounds float32 -> bfloat16 to nearest even, as ggml's GGML_FP32_TO_BF16 does (NaN aside)
    t = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.uint8).numpy().reshape(rows.shape[0], -1)


@cache
def encoders() -> dict[str, Encoder]:
    from quantkit.backends.gguf import kquants, kquants_qx

    return {"F32": _f32, "F16": _f16, "BF16": _bf16, **kquants.ENCODERS, **kquants_qx.ENCODERS}

# Values encoded per call: bounds the encoders' temporaries (a few times this many float32s).
CHUNK_VALUES = 1 << 20


def row_bytes(typ: str, n_per_row: int) -> int:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[typ]]
    return n_per_row // block * size


def rows_per_chunk(n_per_row: int) -> int:
    return max(1, CHUNK_VALUES // max(n_per_row, 1))


def encode(typ: str, rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """uint8 [nrows, row_bytes] for float32 rows [nrows, n_per_row]."""
    if typ in ("F32", "F16", "BF16"):
        return {"F32": _f32, "F16": _f16, "BF16": _bf16}[typ](rows)
    return encoders()[typ](rows, imatrix)
