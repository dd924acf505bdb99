"""The tensors of a GGUF file of one file type: the ggml type of each and their bytes.

Imports the converter and the type mix only when asked, so that `vram` and the card can
import it cheaply.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quantkit.backends.gguf.convert import Hparams, PlannedTensor


def tensor_types(file_type: str, planned: list[PlannedTensor], hp: Hparams, imatrix: bool = False) -> dict[str, str]:
    """GGUF tensor name -> ggml type in a `file_type` file."""
    from quantkit.backends.gguf import mix

    d = hp.dims
    return {p.name: mix.tensor_type(file_type, p.name, p.shape, n_layer=d.layers, n_head=d.heads,
                                    n_head_kv=d.kv_heads, tied=d.tied, arch=hp.arch_name, imatrix=imatrix)
            for p in planned}


def nbytes(typ: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of `shape` (HF order: rows, row length) in ggml type `typ`."""
    from quantkit.backends.gguf import encode

    rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
    return rows * encode.row_bytes(typ, shape[-1])


def type_counts(types: dict[str, str]) -> dict[str, int]:
    """ggml type -> how many tensors have it, sorted by type name (the manifest's tensor_types)."""
    out: dict[str, int] = {}
    for t in types.values():
        out[t] = out.get(t, 0) + 1
    return dict(sorted(out.items()))


def predicted_bytes(config: dict, file_type: str) -> int:
    """Bytes of the tensor data of a `file_type` file for this config (the metadata adds a little)."""
    from quantkit.arch import tensors as arch_tensors
    from quantkit.backends.gguf import convert

    specs = arch_tensors(config)
    planned = convert.plan(config, [t.name for t in specs], {t.name: t.shape for t in specs})
    types = tensor_types(file_type, planned, convert.hparams(config))
    return sum(nbytes(types[p.name], p.shape) for p in planned)
