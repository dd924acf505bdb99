"""Pickle checkpoints (`pytorch_model*.bin`), read only when the user passes --allow-pickle.

Loading goes through `torch.load(weights_only=True)`, which refuses arbitrary objects;
each file becomes a safetensors file in quantkit's cache so the rest of quantkit sees
one kind of source.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from quantkit.errors import SourceError
from quantkit.paths import cache_dir


def to_safetensors(folder: Path, files: list[Path]) -> list[Path]:
    out = []
    for f in files:
        st = f.stat()
        key = hashlib.sha256(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
        target = cache_dir("pickled") / key / (f.stem + ".safetensors")
        if not target.is_file():
            try:
                state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # torch raises many types for a bad pickle
                raise SourceError(f"{f.name} could not be read as a weights-only pickle ({e.__class__.__name__}); convert it to safetensors") from None
            if not isinstance(state, dict):
                raise SourceError(f"{f.name} does not hold a state dict; convert it to safetensors")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in state.items()}, tmp)
            tmp.rename(target)
        out.append(target)
    return out
