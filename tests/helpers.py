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


def autoround_gptq_dense(folder: Path, group_size: int) -> dict[str, torch.Tensor]:
    """auto-round's CPU QuantLinear applied to the identity: the AutoGPTQ layout (qweight, qzeros stored
    minus 1, scales, g_idx) as an independent reader sees it. Keys are module prefixes ending in '.'."""
    from auto_round_extension.torch.qlinear_torch_zp import QuantLinear

    t = load_tensors(folder)
    dense = {}
    for prefix in sorted(k[: -len("qweight")] for k in t if k.endswith(".qweight")):
        qweight = t[prefix + "qweight"]
        infeatures, outfeatures = qweight.shape[0] * 8, qweight.shape[1]
        # static act-order keeps groups contiguous: g_idx is i // group_size, which auto-round's
        # plain path assumes (its g_idx path slices output columns and fails when out > in)
        assert torch.equal(t[prefix + "g_idx"], torch.arange(infeatures, dtype=torch.int32) // group_size)
        ql = QuantLinear(4, group_size, infeatures, outfeatures, bias=False, g_idx=False)
        ql.qweight, ql.qzeros = qweight, t[prefix + "qzeros"]
        ql.scales = t[prefix + "scales"].float()  # exact products; the layout is what is checked
        with torch.inference_mode():
            dense[prefix] = ql(torch.eye(infeatures)).T.contiguous()
    return dense


def autoawq_to_ct(folder: Path) -> dict[str, torch.Tensor]:
    """An AutoAWQ folder converted back to pack-quantized tensors by compressed-tensors' AutoAWQConverter."""
    import json

    from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter

    cfg = json.loads((Path(folder) / "config.json").read_text())["quantization_config"]
    return AutoAWQConverter.from_autoawq_config(cfg).process(load_tensors(folder))
