"""Float arithmetic as ggml's reference quantizers do it, for numpy encoders.

ggml computes in float32, sums in index order, rounds with `nearest_int` (adding
1.5 * 2^23 in float32: round half to even, and a wrapped value beyond 2^22) and
stores scales as IEEE half (round to nearest even, as numpy's float16 cast).
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
MAGIC = F32(12582912.0)  # 1.5 * 2^23
GROUP_MAX_EPS = F32(1e-15)  # ggml: a group whose max is below this quantizes to zeros


def nearest_int(f: np.ndarray) -> np.ndarray:
    """ggml's `nearest_int` bit for bit, also outside |f| < 2^22 where C returns
    garbage rather than the rounded value: int32 of the float32 mantissa of f + 1.5*2^23."""
    v = (np.asarray(f, dtype=F32) + MAGIC).view(np.int32)
    return (v & 0x007FFFFF) - 0x00400000


def _seq_is_reduce() -> bool:
    """Whether np.add.reduce over axis 0 of a C-contiguous [n, m>=2] float32 array adds
    the rows in order (numpy does, with the outer loop over the reduced axis); checked
    once on values where any other order gives a different float32 result."""
    p = np.array([[1.0, 3.0], [2.0 ** 24, -(2.0 ** 24)], [1.0, 1.0], [1.0, 1.0], [-(2.0 ** 24), 2.0 ** 24],
                  [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], dtype=F32)
    p = np.concatenate([p] * 4)
    s = p[0].copy()
    for i in range(1, p.shape[0]):
        s = s + p[i]
    return bool(np.array_equal(np.add.reduce(p, axis=0), s))


_REDUCE_OK = _seq_is_reduce()


def seqsum(p: np.ndarray, zero_start: bool = True) -> np.ndarray:
    """Sum over axis 0 in index order, as a C loop ``for (i...) s += p[i]`` does.

    zero_start: the C sum starts at 0 (then a sum is never -0); otherwise it starts at p[0].
    """
    if p.shape[0] == 1:
        s = p[0].copy()
    elif p.ndim == 2 and p.shape[1] >= 2 and p.flags.c_contiguous and _REDUCE_OK:
        s = np.add.reduce(p, axis=0)
    else:
        s = np.add.accumulate(p, axis=0)[-1]  # accumulate is sequential by definition
    if zero_start:
        s += F32(0)
    return s


def fp16(x: np.ndarray) -> np.ndarray:
    """Round float32 values through IEEE half, as GGML_FP32_TO_FP16 then GGML_FP16_TO_FP32."""
    return np.asarray(x, dtype=F32).astype(np.float16).astype(F32)


def fp16_bytes(x: np.ndarray) -> np.ndarray:
    """The little-endian half-precision bytes of float32 values, shape (..., 2)."""
    return np.ascontiguousarray(np.asarray(x, dtype=F32).astype("<f2")).view(np.uint8).reshape(*np.shape(x), 2)
