"""Helpers for comparing checkpoints in tests."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import safe_open


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                out[k] = st.get_tensor(k)
    return out


def assert_same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    for k in a:
        x, y = a[k], b[k]
        assert x.dtype == y.dtype and x.shape == y.shape, (k, x.dtype, y.dtype, x.shape, y.shape)
        assert torch.equal(x.view(torch.uint8), y.view(torch.uint8)), k


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reference_fp8(src: Path, out: Path) -> Path:
    """llm-compressor's own data-free FP8_DYNAMIC conversion of the same source."""
    from llmcompressor import model_free_ptq

    model_free_ptq(str(src), str(out), scheme="FP8_DYNAMIC", ignore=["lm_head", "re:.*embed_tokens"], device="cpu")
    return out
