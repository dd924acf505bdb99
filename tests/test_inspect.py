"""quantkit inspect on sources, artifacts and GGUF files."""
from __future__ import annotations

import numpy as np
import torch
from conftest import assert_one_line_error
from transformers import LlamaForCausalLM


def test_source_and_artifact(cli, tiny, tmp_path):
    model = LlamaForCausalLM.from_pretrained(tiny)
    n_params = sum(p.numel() for p in model.parameters())
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    r = cli("inspect", tiny, "--json")
    assert r.code == 0, r.err
    src = r.json
    assert src["format"] == "BF16 Hugging Face checkpoint"
    assert src["architecture"] == "LlamaForCausalLM"
    assert src["parameters"] == n_params
    assert src["bytes_per_dtype"] == {"BF16": 2 * n_params}
    assert src["manifest"] is None

    assert cli("fp8", tiny, "-o", tmp_path / "q").code == 0
    q = cli("inspect", tmp_path / "q", "--json").json
    assert q["format"] == "compressed-tensors FP8"
    assert q["parameters"] == n_params
    fp8_params = sum(m.weight.numel() for m in linears)
    scale_bytes = 2 * sum(m.out_features for m in linears)  # one BF16 scale per output row
    assert q["bytes_per_dtype"] == {"F8_E4M3": fp8_params, "BF16": 2 * (n_params - fp8_params) + scale_bytes}
    assert q["manifest"]["method"] == "fp8-dynamic"

    human = cli("inspect", tmp_path / "q")
    assert human.code == 0 and "compressed-tensors FP8" in human.out and "fp8-dynamic" in human.out


def test_gguf_file(cli, tmp_path):
    import gguf

    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float16))
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = cli("inspect", path, "--json")
    assert r.code == 0, r.err
    assert r.json["architecture"] == "llama" and r.json["parameters"] == 8 * 32 + 32
    assert r.json["bytes_per_dtype"] == {"F16": 8 * 32 * 2, "F32": 32 * 4}


def test_bad_paths(cli, tmp_path):
    assert_one_line_error(cli("inspect", tmp_path / "nope"), "no such file")
    (tmp_path / "x.txt").write_text("hi")
    assert_one_line_error(cli("inspect", tmp_path / "x.txt"), ".gguf")
    assert_one_line_error(cli("inspect", tmp_path), "no config.json")
