"""llama.cpp's own quantizer, called through llama-cpp-python's libggml: the reference our encoders must match.

`ggml_quantize_chunk` is what llama.cpp's model quantizer calls for every tensor
(with the tensor's imatrix row when there is one), so a block that matches here
matches what `llama-quantize` writes.
"""
from __future__ import annotations

import ctypes

import gguf
import numpy as np


def _lib():
    from llama_cpp._ggml import libggml

    f = libggml.ggml_quantize_chunk
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                  ctypes.c_int64, ctypes.c_void_p]
    libggml.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    libggml.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return libggml


def quantize_chunk(type_name: str, rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """llama.cpp's encoding of float32 rows [nrows, n_per_row] as `type_name` (e.g. "Q4_K"):
    uint8 array [nrows, bytes per row]. `imatrix`: float32 [n_per_row] or None."""
    lib = _lib()
    qtype = gguf.GGMLQuantizationType[type_name]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    nrows, n = rows.shape
    assert n % block == 0, (n, block)
    out = np.zeros((nrows, n // block * size), dtype=np.uint8)
    qw = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    written = lib.ggml_quantize_chunk(int(qtype), rows.ctypes.data, out.ctypes.data, 0, nrows, n,
                                      None if qw is None else qw.ctypes.data)
    assert written == out.nbytes, (written, out.nbytes)
    return out


def block_agreement(ours: np.ndarray, ref: np.ndarray, type_name: str) -> float:
    """Share of blocks whose bytes are identical."""
    _, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    a = np.asarray(ours, np.uint8).reshape(-1, size)
    b = np.asarray(ref, np.uint8).reshape(-1, size)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.all(a == b, axis=1).mean())
