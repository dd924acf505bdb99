"""llama.cpp itself, through llama-cpp-python (the optional extra `quantkit[llamacpp]`).

- `quantize`: llama.cpp's own model quantizer, for the file types quantkit does not
  encode (IQ*), with quantkit's imatrix handed over in memory.
- `load`: llama.cpp's runtime on CPU, for `verify` (logits of every position).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path

import gguf
import numpy as np

from quantkit.errors import InputError, QuantkitError

INSTALL = "pip install 'quantkit[llamacpp]' (builds llama.cpp: about 17 minutes on 2 cores)"
# llama.cpp refuses these without an importance matrix (src/llama-quant.cpp, tensor_requires_imatrix).
NEED_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "Q2_K_S"}


def lib():
    try:
        import llama_cpp
    except ImportError:
        raise InputError(f"llama-cpp-python is not installed; {INSTALL}") from None
    return llama_cpp


@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp logs to the C-level stderr; keep it off the user's terminal."""
    fd = os.dup(2)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def file_type_id(name: str) -> int:
    try:
        return int(gguf.LlamaFileType["MOSTLY_" + name])
    except KeyError:
        known = sorted(t.name[len("MOSTLY_"):] for t in gguf.LlamaFileType if t.name.startswith("MOSTLY_"))
        raise InputError(f"--type {name}: llama.cpp has no such file type; known: {', '.join(known)}") from None


def check_types(types: list[str], has_imatrix: bool) -> None:
    lib()
    for t in types:
        file_type_id(t)
        if t in NEED_IMATRIX and not has_imatrix:
            raise InputError(f"--type {t} needs an importance matrix in llama.cpp; add --imatrix (or --imatrix-file FILE)")


def quantize(src: Path, dst: Path, file_type: str, imatrix=None) -> None:
    """llama.cpp's `llama_model_quantize` from a F16/BF16/F32 GGUF."""
    llama_cpp = lib()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type_id(file_type)
    params.nthread = os.cpu_count() or 1
    keep = []
    if imatrix is not None:
        entries = [(name, imatrix.weights(name)) for name in imatrix.entries]
        arr = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
        for i, (name, vec) in enumerate(entries):
            v = np.ascontiguousarray(vec, dtype=np.float32)
            keep.append(v)
            arr[i].name = name.encode()
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = v.size
        arr[len(entries)].name = None
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(arr)
    with quiet_stderr():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise QuantkitError(f"llama.cpp's quantizer failed on {file_type} (code {rc}); run with QUANTKIT_TRACEBACK=1 and LLAMA_LOG to see its log")


def tensor_types(path: Path) -> dict[str, str]:
    r = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in r.tensors}


def load(path: Path, n_ctx: int = 512, logits_all: bool = True):
    """A llama.cpp model on CPU (llama_cpp.Llama), quiet."""
    llama_cpp = lib()
    with quiet_stderr():
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=logits_all, verbose=False,
                               n_threads=os.cpu_count() or 1, n_gpu_layers=0)
