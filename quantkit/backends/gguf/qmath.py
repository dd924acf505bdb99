"""Float arithmetic as ggml's reference quantizers do it, for numpy encoders.

ggml computes in float32, rounds with `nearest_int` (adding 1.5 * 2^23 in float32:
round half to even) and stores scales as IEEE half (round to nearest even). numpy's
float32 `rint` and float16 casts are the same operations.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32


def nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int on float32 values (|x| < 2^22): round half to even."""
    return np.rint(np.asarray(x, dtype=F32)).astype(np.int32)


def fp16(x: np.ndarray) -> np.ndarray:
    """Round float32 values through IEEE half, as GGML_FP32_TO_FP16 then GGML_FP16_TO_FP32."""
    return np.asarray(x, dtype=F32).astype(np.float16).astype(F32)


def fp16_bytes(x: np.ndarray) -> np.ndarray:
    """The little-endian half-precision bytes of float32 values, shape (..., 2)."""
    return np.ascontiguousarray(np.asarray(x, dtype=F32).astype("<f2")).view(np.uint8).reshape(*np.shape(x), 2)
