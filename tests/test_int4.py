"""INT4 GPTQ and AWQ: the three layouts hold the same weights, read by other people's readers;
the AWQ CPU workaround; the group-size fallback."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error
from helpers import autoawq_to_ct, autoround_gptq_dense, load_tensors
from quantkit.backends.int4 import layouts

LAYOUTS = ["compressed-tensors", "gptq", "awq"]
FAST = ["--samples", "8", "--seq-len", "128"]


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory):
    """quantkit gptq and awq on the tiny model, in all three layouts (through the CLI)."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("int4")
    out = {}
    for method in ("gptq", "awq"):
        for layout in LAYOUTS:
            if (method, layout) == ("awq", "gptq"):
                continue  # refused: AutoGPTQ's z - 1 storage cannot hold AWQ's zero point 0 (test_bad_int4_options)
            folder = root / f"{method}-{layout}"
            extra = ["--grid", "4"] if method == "awq" else []
            r = subprocess.run([sys.executable, "-m", "quantkit", method, str(tiny), "-o", str(folder), "--format", layout,
                                "--json", *FAST, *extra], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            out[method, layout] = folder
    return out


def _dense_from_transformers(folder: Path) -> dict[str, torch.Tensor]:
    """compressed-tensors' own decompression, as transformers loads the folder."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model(torch.tensor([[1, 2, 3]]))  # decompresses on the first forward
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_three_layouts_hold_identical_weights(made, method):
    ct = made[method, "compressed-tensors"]
    dense = _dense_from_transformers(ct)
    group = json.loads((ct / "quantkit.json").read_text())["parameters"]["group_size"]
    assert group == 128

    # AutoGPTQ layout (symmetric only), read by auto-round's QuantLinear
    if method == "gptq":
        gptq = {p.rstrip("."): w for p, w in autoround_gptq_dense(made[method, "gptq"], group).items()}
        assert sorted(gptq) == sorted(dense)
        for name in dense:
            assert torch.equal(gptq[name], dense[name]), name

    # AutoAWQ layout, converted back by compressed-tensors' AutoAWQConverter: the same tensors as ours
    back = autoawq_to_ct(made[method, "awq"])
    ours = load_tensors(ct)
    for prefix in layouts.quantized_prefixes(ours):
        mine, theirs = layouts.read_ct(ours, prefix, group), layouts.read_ct(back, prefix, group)
        assert torch.equal(layouts.dequantize(mine), dense[prefix.rstrip(".")]), prefix
        assert torch.equal(layouts.dequantize(theirs), dense[prefix.rstrip(".")]), prefix


def test_inspect_counts_the_source_parameters(made, tiny):
    from quantkit.inspection import inspect_path

    want = inspect_path(tiny)["parameters"]
    for (method, layout), folder in made.items():
        info = inspect_path(folder)
        assert info["parameters"] == want, (method, layout)
        assert info["format"].startswith({"compressed-tensors": "compressed-tensors INT4", "gptq": "gptq", "awq": "awq"}[layout])


def test_layout_configs(made):
    g = json.loads((made["gptq", "gptq"] / "config.json").read_text())["quantization_config"]
    assert g["quant_method"] == "gptq" and g["bits"] == 4 and g["group_size"] == 128 and g["sym"] is True
    assert g["desc_act"] is False and g["checkpoint_format"] == "gptq"
    a = json.loads((made["awq", "awq"] / "config.json").read_text())["quantization_config"]
    assert a == {**a, "quant_method": "awq", "version": "gemm", "zero_point": True, "bits": 4, "group_size": 128}
    c = json.loads((made["awq", "compressed-tensors"] / "config.json").read_text())["quantization_config"]
    w = c["config_groups"]["group_0"]["weights"]
    assert c["format"] == "pack-quantized" and w["symmetric"] is False and w["group_size"] == 128
    t = load_tensors(made["gptq", "gptq"])
    assert t["model.layers.0.self_attn.q_proj.qweight"].dtype == torch.int32
    assert t["model.layers.0.self_attn.q_proj.scales"].dtype == torch.float16
    assert "lm_head.weight" in t and t["lm_head.weight"].dtype == torch.bfloat16
    for folder in made.values():
        m = json.loads((folder / "quantkit.json").read_text())
        assert set(m["files"]) >= {"config.json", "model.safetensors"} and "recipe.yaml" not in m["files"]


def test_awq_cpu_workaround_is_needed():
    """llm-compressor's AWQ pins cached activations, which fails without CUDA; our context skips it."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    from quantkit.backends.int4.calibrate import awq_on_cpu

    assert not torch.cuda.is_available()
    cache = IntermediatesCache.from_dataloader([{"x": torch.ones(2, 2)}])
    with pytest.raises(RuntimeError):
        cache.pin_memory(0)
    with awq_on_cpu():
        cache.pin_memory(0)
    assert IntermediatesCache.pin_memory is not None
    with pytest.raises(RuntimeError):
        cache.pin_memory(0)  # restored afterwards


def test_group_size_fallback(cli, tiny, tmp_path):
    """A model whose hidden size (192) is no multiple of 128: group size 64, said and recorded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    src = tmp_path / "narrow"
    cfg = LlamaConfig(hidden_size=192, intermediate_size=512, num_hidden_layers=2, num_attention_heads=3,
                      num_key_value_heads=1, vocab_size=1024, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(src)
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (tiny / f).exists():
            shutil.copy(tiny / f, src / f)
    r = cli("gptq", src, "-o", tmp_path / "out", "--json", *FAST)
    assert r.code == 0, r.err
    assert "using 64" in r.err
    assert r.json["parameters"]["group_size"] == 64 and r.json["parameters"]["group_size_requested"] == 128
    q = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert q["config_groups"]["group_0"]["weights"]["group_size"] == 64


def test_group_size_helper():
    from quantkit.formats import group_size_for

    assert group_size_for([4096, 14336], 128) == 128  # Llama-3.1-8B
    assert group_size_for([576, 1536], 128) == 64  # SmolLM2-135M
    assert group_size_for([960, 2560], 128) == 64  # SmolLM2-360M
    assert group_size_for([2048, 8192], 128) == 128


def test_bad_int4_options(cli, tiny, tmp_path):
    r = cli("awq", tiny, "-o", tmp_path / "x", "--format", "exl2")
    assert_one_line_error(r, "--format exl2")
    r = cli("gptq", tiny, "-o", tmp_path / "x", "--format", "awq", "--act-order", "group")
    assert_one_line_error(r, "--act-order group", "llm-compressor")
    r = cli("awq", tiny, "-o", tmp_path / "x", "--format", "gptq")
    assert_one_line_error(r, "--format gptq: holds symmetric weights only")
    r = cli("awq", tiny, "-o", tmp_path / "x", "--grid", "2")  # llm-compressor would divide by grid - 2
    assert_one_line_error(r, "--grid", "3")
    r = cli("gptq", tiny, "-o", tmp_path / "x", "--samples", "100000", "--seq-len", "512")
    assert_one_line_error(r, "calibration text gives")
    assert list(tmp_path.iterdir()) == []


VRAM_FORMATS = {("gptq", "compressed-tensors"): "int4-g128", ("awq", "compressed-tensors"): "int4-g128:asym",
                ("gptq", "gptq"): "int4-g128:gptq",
                ("gptq", "awq"): "int4-g128:awq", ("awq", "awq"): "int4-g128:awq"}


def test_vram_prediction_matches_int4_artifacts(cli, made):
    from quantkit.inspection import inspect_path

    for key, folder in made.items():
        real = inspect_path(folder)["weight_bytes"]
        predicted = cli("vram", folder, "--format", VRAM_FORMATS[key], "--json").json["weights_bytes"]
        assert abs(predicted - real) / real < 0.01, (key, predicted, real)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_beats_round_to_nearest(cli, smollm2, tmp_path, method):
    """On SmolLM2, GPTQ and AWQ beat plain round-to-nearest of the same scheme (symmetric for GPTQ,
    with zero points for AWQ) in PPL ratio and mean KLD, measured by verify on the same windows."""
    from quantkit.backends.int4 import RTN
    from quantkit.source import resolve

    src = resolve(str(smollm2))
    rtn = RTN(symmetric=method == "gptq")
    (tmp_path / "rtn").mkdir()
    rtn.run(rtn.check(src), tmp_path / "rtn", lambda n: None)
    extra = ["--grid", "5"] if method == "awq" else []
    made_dir = tmp_path / f"{method}-ct"
    r = cli(method, smollm2, "-o", made_dir, "--samples", "16", "--seq-len", "256", "--json", *extra)
    assert r.code == 0, r.err
    assert r.json["parameters"]["group_size"] == 64  # 576 is no multiple of 128
    v = cli("verify", made_dir, tmp_path / "rtn", "--source", smollm2, "--tokens", "2048", "--json", "--no-record")
    assert v.code == 0, v.err
    calibrated, baseline = v.json
    assert calibrated["kld_mean"] < baseline["kld_mean"], (calibrated["kld_mean"], baseline["kld_mean"])
    assert calibrated["ppl_ratio"] < baseline["ppl_ratio"], (calibrated["ppl_ratio"], baseline["ppl_ratio"])

    # SmolLM2's scales fit the legacy layouts too: repack both and read them back with the other readers
    params = r.json["parameters"]
    ours = load_tensors(made_dir)
    dense = {p: layouts.dequantize(layouts.read_ct(ours, p, 64)) for p in layouts.quantized_prefixes(ours)}
    legacy = ("gptq", "awq") if method == "gptq" else ("awq",)  # AutoGPTQ's layout is symmetric only
    for layout in legacy:
        shutil.copytree(made_dir, tmp_path / f"layout-{layout}")
        layouts.repack(tmp_path / f"layout-{layout}", layout, params)
    gptq = autoround_gptq_dense(tmp_path / "layout-gptq", 64) if method == "gptq" else None
    back = autoawq_to_ct(tmp_path / "layout-awq")
    for prefix, w in dense.items():
        if gptq is not None:
            assert torch.equal(gptq[prefix], w), prefix
        assert torch.equal(layouts.dequantize(layouts.read_ct(back, prefix, 64)), w), prefix
