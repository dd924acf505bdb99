"""quantkit vram: facts from public configs, and predictions against real artifacts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error

DATA = Path(__file__).parent / "data"
GIB = 1024**3


@pytest.mark.parametrize("name,kv_gib,params", [
    ("llama-3.1-8b", 0.125, 8_030_261_248),     # published parameter counts
    ("llama-3.1-70b", 0.3125, 70_553_706_496),
])
def test_llama_kv_cache_and_weights(cli, name, kv_gib, params):
    r = cli("vram", DATA / f"{name}-config.json", "--context", "1k,128k", "--json")
    assert r.code == 0, r.err
    ctx = r.json["contexts"]
    assert ctx[0]["context"] == 1024 and ctx[0]["kv_cache_bytes"] == kv_gib * GIB
    assert ctx[1]["kv_cache_bytes"] == 128 * kv_gib * GIB
    assert ctx[0]["weights_bytes"] == 2 * params
    assert ctx[0]["total_bytes"] == ctx[0]["weights_bytes"] + ctx[0]["kv_cache_bytes"] + ctx[0]["overhead_bytes"]


def test_kv_dtypes_and_batch(cli):
    cfg = DATA / "llama-3.1-8b-config.json"
    fp16 = cli("vram", cfg, "--context", "4k", "--json").json["contexts"][0]["kv_cache_bytes"]
    fp8 = cli("vram", cfg, "--context", "4k", "--kv-dtype", "fp8", "--json").json["contexts"][0]["kv_cache_bytes"]
    q4 = cli("vram", cfg, "--context", "4k", "--kv-dtype", "q4_0", "--json").json["contexts"][0]["kv_cache_bytes"]
    b4 = cli("vram", cfg, "--context", "4k", "--batch", "4", "--json").json["contexts"][0]["kv_cache_bytes"]
    assert fp8 * 2 == fp16 and q4 == fp16 * 18 // 64 and b4 == 4 * fp16


def test_gpu_fit(cli):
    cfg = DATA / "llama-3.1-8b-config.json"
    r = cli("vram", cfg, "--format", "fp8", "--gpu", "24GiB", "--context", "8k,128k", "--json").json
    n = r["max_context_fitting"]
    per_tok = r["kv_bytes_per_token"]
    room = 24 * GIB - r["weights_bytes"] - r["overhead_bytes"]
    assert n * per_tok <= room < (n + 1) * per_tok  # the longest that fits, not one token more
    assert [c["fits"] for c in r["contexts"]] == [True, n >= 128 * 1024]
    small = cli("vram", cfg, "--gpu", "8GiB", "--json").json
    assert small["max_context_fitting"] == 0  # BF16 8B weights alone exceed 8 GiB


def test_fp8_prediction_matches_artifact(cli, tiny, smollm2, tmp_path):
    from quantkit.inspection import inspect_path

    for src in (tiny, smollm2):
        out = tmp_path / src.name
        assert cli("fp8", src, "-o", out).code == 0
        real = inspect_path(out)["weight_bytes"]
        predicted = cli("vram", out, "--format", "fp8", "--json").json["weights_bytes"]
        assert abs(predicted - real) / real < 0.01, (src.name, predicted, real)
        bf16 = cli("vram", src, "--json").json["weights_bytes"]
        assert bf16 == inspect_path(src)["weight_bytes"]


def test_human_table(cli):
    r = cli("vram", DATA / "llama-3.1-8b-config.json", "--format", "gguf:Q4_K_M", "--gpu", "24GiB")
    assert r.code == 0, r.err
    assert "KV cache" in r.out and "longest context" in r.out


@pytest.mark.parametrize("args,needle", [
    (("--format", "int3"), "--format int3"),
    (("--format", "gguf:Q9_K"), "unknown GGUF type"),
    (("--context", "lots"), "context 'lots'"),
    (("--gpu", "big"), "--gpu 'big'"),
    (("--kv-dtype", "int2"), "--kv-dtype int2"),
])
def test_bad_options(cli, args, needle):
    assert_one_line_error(cli("vram", DATA / "llama-3.1-8b-config.json", *args), needle)


def test_bad_model(cli, tmp_path):
    assert_one_line_error(cli("vram", tmp_path / "nope"), "no such folder")
    assert_one_line_error(cli("vram", tmp_path), "no config.json")


@pytest.mark.parametrize("fmt,message", [
    ("int4", "--format int4: use bf16, fp16, fp8, int4-g128[:asym|gptq|awq], exl2:BPW[:HEAD_BITS] or gguf:TYPE"),
    ("fp8-x", "--format fp8-x: use bf16, fp16, fp8"),
    ("bf16-x", "--format bf16-x: use bf16, fp16, fp8"),
    ("gguf-q4_0", "--format gguf-q4_0: use bf16, fp16, fp8"),
    ("int4-gx", "--format int4-gx: write int4-gGROUP[:sym|asym|gptq|awq], e.g. int4-g128 or int4-g128:awq"),
    ("int4-g128:zz", "--format int4-g128:zz: write int4-gGROUP"),
    ("exl2:4:7", "--format exl2:4:7: write exl2:BPW or exl2:BPW:HEAD_BITS with head bits 2, 3, 4, 5, 6 or 8, e.g. exl2:4.0:6"),
    ("exl2", "--format exl2: name a bit rate (exl2:4.0 or exl2:4.0:6), or pass an EXL2 folder as MODEL"),
    ("GGUF:q9_k", "--format GGUF:q9_k: unknown GGUF type; use one of"),
])
def test_format_spellings_refused(fmt, message):
    from quantkit.errors import InputError
    from quantkit.memory import weight_bytes

    cfg = json.loads((DATA / "llama-3.1-8b-config.json").read_text())
    with pytest.raises(InputError) as e:
        weight_bytes(cfg, fmt)
    assert str(e.value).startswith(message), str(e.value)


def test_format_spellings_each_backend_answers():
    """Each quantized kind is counted by the backend that claims it; spellings are case-blind."""
    from quantkit.backends.registry import for_vram_kind
    from quantkit.memory import split_format, weight_bytes

    assert split_format("INT4-G128:AWQ") == ("int4-", "g128:awq") and split_format("exl2:4.0:6") == ("exl2", "4.0:6")
    assert {k: for_vram_kind(k).name for k in ("fp8", "int4-", "exl2", "gguf")} == {
        "fp8": "fp8", "int4-": "gptq", "exl2": "exl2", "gguf": "gguf"}
    cfg = json.loads((DATA / "llama-3.1-8b-config.json").read_text())
    bf16 = weight_bytes(cfg, "bf16")[0]
    assert weight_bytes(cfg, "BF16:x")[0] == weight_bytes(cfg, "fp16")[0] == bf16
    sizes = [weight_bytes(cfg, f)[0] for f in ("fp8", "int4-g128:gptq", "int4-g128", "exl2:4.0", "gguf:Q4_K_M")]
    assert all(0.2 * bf16 < s < 0.6 * bf16 for s in sizes), sizes
    assert weight_bytes(cfg, "int4-g128:")[0] == weight_bytes(cfg, "int4-g128:sym")[0]
