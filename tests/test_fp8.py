"""quantkit fp8: equal to llm-compressor's FP8_DYNAMIC output, loadable by transformers, measured."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_same_tensors, load_tensors, reference_fp8, sha256
from transformers import AutoModelForCausalLM, LlamaForCausalLM


def quant_config(folder):
    return json.loads((folder / "config.json").read_text())["quantization_config"]


def test_tiny_equals_llmcompressor(cli, tiny, tmp_path):
    r = cli("fp8", tiny, "-o", tmp_path / "ours", "--json")
    assert r.code == 0, r.err
    ref = reference_fp8(tiny, tmp_path / "ref")
    ours = tmp_path / "ours"
    assert_same_tensors(load_tensors(ours), load_tensors(ref))
    assert quant_config(ours) == quant_config(ref)
    weights = load_tensors(ours)
    assert weights["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn
    assert weights["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert weights["lm_head.weight"].dtype == torch.bfloat16


def test_manifest_and_carried_files(cli, tiny, tmp_path):
    r = cli("fp8", tiny, "-o", tmp_path / "a", "--json")
    assert r.code == 0, r.err
    out = tmp_path / "a"
    m = json.loads((out / "quantkit.json").read_text())
    assert r.json["output"] == str(out)
    assert m["method"] == "fp8-dynamic" and m["parameters"]["scheme"] == "FP8_DYNAMIC"
    assert m["source"]["weight_files"]["model.safetensors"]["sha256"] == sha256(tiny / "model.safetensors")
    on_disk = {p.name for p in out.iterdir()} - {"quantkit.json", "README.md"}  # the card is written from the manifest, not hashed in it
    assert (out / "README.md").is_file()
    assert set(m["files"]) == on_disk
    for name, entry in m["files"].items():
        assert entry["sha256"] == sha256(out / name) and entry["bytes"] == (out / name).stat().st_size
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (tiny / name).read_bytes(), name
    assert m["timings"]["wall_s"] > 0 and m["peak_rss_bytes"] > 0


def test_default_output_name(cli, tiny, tmp_path):
    r = cli("fp8", tiny, cwd=tmp_path)
    assert r.code == 0, r.err
    assert (tmp_path / "tiny-llama-FP8-Dynamic" / "quantkit.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-llama-FP8-Dynamic"]


def test_transformers_loads_it(cli, tiny, tmp_path):
    assert cli("fp8", tiny, "-o", tmp_path / "q").code == 0
    x = torch.randint(3, 1000, (1, 64))
    with torch.inference_mode():
        src = LlamaForCausalLM.from_pretrained(tiny, dtype=torch.float32)(x).logits
        q = AutoModelForCausalLM.from_pretrained(tmp_path / "q", dtype=torch.float32)(x).logits
    assert torch.isfinite(q).all()
    cos = torch.nn.functional.cosine_similarity(src.flatten(), q.flatten(), dim=0)
    assert 0.99 < cos < 1.0  # close to the source, and not the source itself


def test_sharded_source(cli, tiny, tmp_path):
    sharded = tmp_path / "sharded"
    LlamaForCausalLM.from_pretrained(tiny, dtype=torch.bfloat16).save_pretrained(sharded, max_shard_size="2MB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (sharded / f).write_bytes((tiny / f).read_bytes())
    shards = sorted(sharded.glob("*.safetensors"))
    assert len(shards) > 1
    r = cli("fp8", sharded, "-o", tmp_path / "ours")
    assert r.code == 0, r.err
    ref = reference_fp8(sharded, tmp_path / "ref")
    assert sorted(p.name for p in (tmp_path / "ours").glob("*.safetensors")) == [p.name for p in shards]
    assert_same_tensors(load_tensors(tmp_path / "ours"), load_tensors(ref))
    index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(load_tensors(tmp_path / "ours"))
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in load_tensors(tmp_path / "ours").values())


@pytest.mark.slow
def test_smollm2_equals_llmcompressor_and_reports_perplexity(cli, smollm2, tmp_path):
    r = cli("fp8", smollm2, "-o", tmp_path / "ours", "--eval", "--eval-tokens", "4096", "--json")
    assert r.code == 0, r.err
    ref = reference_fp8(smollm2, tmp_path / "ref")
    assert_same_tensors(load_tensors(tmp_path / "ours"), load_tensors(ref))
    ev = r.json["verify"]
    # A trained 135M model on encyclopedia prose: PPL in the tens (22.8 measured on 20k tokens).
    assert 10 < ev["ppl_source"] < 40
    # FP8 costs a small model a few percent at most (1.0105 seen on these 4k tokens);
    # on short texts the sign of so small a change is noise, so only the size is bounded.
    assert 0.98 < ev["ppl_ratio"] < 1.05 and ev["ppl_quant"] != ev["ppl_source"]
    assert ev["tokens_scored"] == 8 * 255
    assert json.loads((tmp_path / "ours" / "quantkit.json").read_text())["verify"] == ev


def test_tensor_selection_matches_compressed_tensors(smollm2, tiny):
    from compressed_tensors.utils import match_quantizable_tensors

    from quantkit.backends.fp8.stream import IGNORE, quantized_names
    from quantkit.stio import read_header

    extra = ["model.norm.weight", "model.layers.0.self_attn.q_proj.bias", "model.layers.0.q_norm.weight",
             "lm_head.weight", "model.embed_tokens.weight", "model.layers.3.mlp.experts.0.up_proj.weight"]
    for folder in (smollm2, tiny):
        names = list(read_header(folder / "model.safetensors").tensors) + extra
        theirs = {n for _, n in match_quantizable_tensors(dict.fromkeys(names), IGNORE, ["Linear"])}
        assert quantized_names(names) == theirs
