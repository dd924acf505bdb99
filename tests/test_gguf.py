"""GGUF: quantkit's converter and encoders, proven against llama.cpp itself (llama-cpp-python).

- llama.cpp loads every file type we write and generates text;
- our tensors equal llama.cpp's quantizer output from the same input: Q8_0 and Q4_0 tensors byte
  for byte, K-quant tensors at least 99.9% of blocks, and the same type for every tensor;
- the file's tokenizer gives the HF tokenizer's ids in llama.cpp;
- llama.cpp's logits on our F32 file equal transformers' on the source (layout, rope, permutation);
- llama.cpp's PPL on our Q4_K_M equals its PPL on its own Q4_K_M within 0.1%.
"""
from __future__ import annotations

import json
import math
import shutil

import gguf
import numpy as np
import pytest
import torch

from quantkit.backends.gguf import llamacpp, mix
from tests.conftest import assert_one_line_error

ALL_TYPES = list(mix.FILE_TYPES)
EXACT = {"Q8_0", "Q4_0", "F16", "BF16", "F32"}  # byte-identical required; K types >= 99.9% of blocks


def tensors(path) -> dict[str, tuple[str, np.ndarray]]:
    r = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, np.asarray(t.data).view(np.uint8).reshape(-1)) for t in r.tensors}


def compare_with_llamacpp(ours_path, reference_path) -> dict[str, tuple[str, int, int]]:
    """Every tensor has llama.cpp's type; returns {name: (type, identical blocks, blocks)}."""
    ours, ref = tensors(ours_path), tensors(reference_path)
    assert set(ours) == set(ref), sorted(set(ours) ^ set(ref))
    out = {}
    for name, (typ, data) in ours.items():
        rtyp, rdata = ref[name]
        assert typ == rtyp, f"{name}: ours {typ}, llama.cpp {rtyp}"
        size = 4 if typ == "F32" else 2 if typ in ("F16", "BF16") else gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[typ]][1]
        a, b = data.reshape(-1, size), rdata.reshape(-1, size)
        assert a.shape == b.shape, name
        out[name] = (typ, int(np.all(a == b, axis=1).sum()), len(a))
    return out


def check_blocks(result: dict[str, tuple[str, int, int]], k_floor: float = 0.999) -> dict[str, float]:
    """Q8_0/Q4_0 (and unquantized) tensors byte-identical; each K type at least `k_floor` of its blocks
    in the file. Returns the share of identical blocks per type."""
    per_type: dict[str, list[int]] = {}
    for name, (typ, same, total) in result.items():
        if typ in EXACT:
            assert same == total, f"{name} ({typ}): {total - same} of {total} blocks differ from llama.cpp's"
        acc = per_type.setdefault(typ, [0, 0])
        acc[0] += same
        acc[1] += total
    shares = {t: s / n for t, (s, n) in per_type.items()}
    for t, share in shares.items():
        assert share >= k_floor, f"{t}: {share:.5f} of blocks identical to llama.cpp's"
    return shares


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny):
    """Every type quantkit encodes, from the tiny model, in one run."""
    from quantkit.pipeline import convert

    out = tmp_path_factory.mktemp("gguf") / "tiny-GGUF"
    folder, manifest = convert("gguf", str(tiny), out, show_progress=False, options={"type": ",".join(ALL_TYPES)})
    return folder, manifest


def test_one_pass_writes_every_type_with_modelfiles(tiny_gguf):
    folder, manifest = tiny_gguf
    for t in ALL_TYPES:
        f = folder / f"tiny-llama-{t}.gguf"
        assert f.is_file(), t
        mf = (folder / f"tiny-llama-{t}.Modelfile").read_text()
        assert mf.startswith(f"FROM ./{f.name}") or f"FROM ./{f.name}" in mf
        assert manifest["files"][f.name]["bytes"] == f.stat().st_size
        r = gguf.GGUFReader(str(f))
        assert r.fields["general.file_type"].contents() == mix.FILE_TYPES[t][0]
    assert manifest["format"] == "gguf" and manifest["parameters"]["types"] == ALL_TYPES
    assert (folder / "tokenizer.model").is_file() and (folder / "quantkit.json").is_file()


@pytest.mark.parametrize("typ", ALL_TYPES)
def test_llamacpp_loads_and_generates(tiny_gguf, typ):
    folder, _ = tiny_gguf
    llm = llamacpp.load(folder / f"tiny-llama-{typ}.gguf", n_ctx=128, logits_all=False)
    ids = llm.tokenize(b"To be, or not to be", add_bos=True)
    out = []
    for tok in llm.generate(ids, temp=0.0, top_k=1):
        out.append(tok)
        if len(out) == 8:
            break
    assert len(out) == 8 and all(0 <= t < llm.n_vocab() for t in out)


@pytest.mark.parametrize("typ", ALL_TYPES[2:])  # the quantized ones
def test_tensors_match_llamacpp_quantizer(tiny_gguf, tmp_path, typ):
    """llama.cpp quantizes our F16 file; every tensor of our own file must match its output."""
    folder, _ = tiny_gguf
    ref = tmp_path / f"ref-{typ}.gguf"
    llamacpp.quantize(folder / "tiny-llama-F16.gguf", ref, typ)
    ours = folder / f"tiny-llama-{typ}.gguf"
    shares = check_blocks(compare_with_llamacpp(ours, ref))
    assert mix.FILE_TYPES[typ][1] in shares  # the tiny model's widths let every type be used


def test_f16_from_bf16_equals_llamacpp_conversion(tiny_gguf, tmp_path):
    """llama.cpp's quantizer turning our BF16 file into F16 gives our F16 tensors."""
    folder, _ = tiny_gguf
    ref = tmp_path / "ref-F16.gguf"
    llamacpp.quantize(folder / "tiny-llama-BF16.gguf", ref, "F16")
    ours, theirs = tensors(folder / "tiny-llama-F16.gguf"), tensors(ref)
    for name, (typ, data) in ours.items():
        assert theirs[name][0] == typ and np.array_equal(theirs[name][1], data), name


def _hf_logits(src, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].numpy()


def _llamacpp_logits(path, ids):
    llm = llamacpp.load(path, n_ctx=256)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def test_llamacpp_logits_equal_transformers(tiny_gguf, tiny):
    """Our BF16 file in llama.cpp against the BF16 source in transformers (float32 compute):
    wrong q/k permutation, rope, norms or tensor names would show here."""
    folder, _ = tiny_gguf
    ids = [1, 45, 300, 17, 900, 12, 77, 5, 600, 33, 2, 8, 1000, 64, 128, 256]
    ours = _llamacpp_logits(folder / "tiny-llama-BF16.gguf", ids)
    ref = _hf_logits(tiny, ids)
    assert np.abs(ours - ref).max() < 2e-2 * np.abs(ref).max(), np.abs(ours - ref).max()
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_llama3_rope_scaling(cli, tiny, tmp_path):
    """rope_freqs.weight for llama3 scaling: factors equal transformers' own llama3 inv_freq, and
    llama.cpp's logits on the converted model equal transformers' over a long-ish sequence."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    src = tmp_path / "llama3-rope"
    shutil.copytree(tiny, src)
    cfg = json.loads((src / "config.json").read_text())
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 10000.0}
    cfg.pop("rope_scaling", None)
    cfg["rope_parameters"] = rope
    cfg["max_position_embeddings"] = 2048
    (src / "config.json").write_text(json.dumps(cfg))
    r = cli("gguf", src, "--type", "F16", "-o", tmp_path / "out", "--json")
    assert r.code == 0, r.err
    f = tmp_path / "out" / "llama3-rope-F16.gguf"
    rd = gguf.GGUFReader(str(f))
    factors = np.asarray(next(t for t in rd.tensors if t.name == "rope_freqs.weight").data, dtype=np.float64)
    hf_cfg = AutoConfig.from_pretrained(src)
    inv_scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    inv = 1.0 / (10000.0 ** (np.arange(0, head_dim, 2) / head_dim))
    np.testing.assert_allclose(factors, inv / inv_scaled.double().numpy(), rtol=1e-5)
    assert len(set(np.round(factors, 4))) > 2  # the test config puts frequencies in all three bands
    ids = list(range(3, 203))
    ours, ref = _llamacpp_logits(f, ids), _hf_logits(src, ids)
    assert np.abs(ours - ref).max() < 2e-2 * np.abs(ref).max()


def test_tokenizer_ids_equal_hf_in_llamacpp(tiny_gguf, tiny):
    from transformers import AutoTokenizer

    from quantkit.text import default_text

    folder, _ = tiny_gguf
    text = default_text("evaluation")[:20000]
    hf = AutoTokenizer.from_pretrained(tiny)
    llm = llamacpp.load(folder / "tiny-llama-Q8_0.gguf", n_ctx=64, logits_all=False)
    ours = llm.tokenize(text.encode(), add_bos=True, special=False)
    assert ours == hf(text).input_ids


def tensor_bytes(path) -> int:
    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)


def test_vram_predicts_gguf_sizes(tiny_gguf, tiny):
    """vram's GGUF weights (from config.json alone) equal the tensor bytes llama.cpp loads from each file."""
    from quantkit.memory import weight_bytes

    folder, _ = tiny_gguf
    cfg = json.loads((tiny / "config.json").read_text())
    for t in ALL_TYPES:
        predicted, _ = weight_bytes(cfg, f"gguf:{t}")
        assert predicted == tensor_bytes(folder / f"tiny-llama-{t}.gguf"), t


def test_imatrix_quantization_matches_llamacpp(tiny, tmp_path):
    """--imatrix: our encoders with the imatrix equal llama.cpp's quantizer handed the same imatrix,
    block for block. llama.cpp starts from our BF16 file, which holds exactly the source's values
    (from the F16 file one block of the tiny model differs: F16 rounds the smallest weights)."""
    from quantkit.backends.gguf import imatrix as im
    from quantkit.pipeline import convert

    folder, manifest = convert("gguf", str(tiny), tmp_path / "im", show_progress=False,
                               options={"type": "BF16,Q4_K_M,Q3_K_S,Q4_0,Q2_K,Q4_1,Q5_K_S,Q6_K", "imatrix": True,
                                        "imatrix_chunks": 4})
    imx = im.load(folder / "imatrix.gguf")
    for typ in ("Q4_K_M", "Q3_K_S", "Q4_0", "Q2_K", "Q4_1", "Q5_K_S", "Q6_K"):
        ref = tmp_path / f"ref-{typ}.gguf"
        llamacpp.quantize(folder / "tiny-llama-BF16.gguf", ref, typ, imx)
        check_blocks(compare_with_llamacpp(folder / f"tiny-llama-{typ}.gguf", ref), k_floor=1.0)
    # the imatrix changed the encoding (else this test proves nothing about it)
    plain = tmp_path / "plain.gguf"
    llamacpp.quantize(folder / "tiny-llama-BF16.gguf", plain, "Q4_K_M")
    a, b = tensors(folder / "tiny-llama-Q4_K_M.gguf"), tensors(plain)
    assert not np.array_equal(a["blk.0.attn_q.weight"][1], b["blk.0.attn_q.weight"][1])
    assert manifest["parameters"]["imatrix"]["chunks"] == 4


def test_engine_llamacpp_for_iq_types(cli, tiny, tmp_path):
    r = cli("gguf", tiny, "--type", "Q4_K_M,IQ4_XS,IQ4_NL", "--engine", "llamacpp", "-o", tmp_path / "o", "--json")
    assert r.code == 0, r.err
    f = tmp_path / "o" / "tiny-llama-IQ4_XS.gguf"
    assert {v[0] for v in tensors(f).values()} >= {"IQ4_XS"}
    assert {v[0] for v in tensors(tmp_path / "o" / "tiny-llama-IQ4_NL.gguf").values()} >= {"IQ4_NL"}
    assert not list((tmp_path / "o").glob(".bf16-*")) and not (tmp_path / "o" / "tiny-llama-BF16.gguf").exists()
    llm = llamacpp.load(f, n_ctx=64)
    llm.eval([1, 2, 3])
    assert np.isfinite(np.array(llm.scores[:3])).all()
    assert r.json["parameters"]["engine"] == {"Q4_K_M": "quantkit", "IQ4_XS": "llama.cpp", "IQ4_NL": "llama.cpp"}


def test_bad_gguf_options(cli, tiny, tmp_path):
    assert_one_line_error(cli("gguf", tiny, "--type", "Q4_K_X", "-o", tmp_path / "a"), "Q4_K_X")
    assert_one_line_error(cli("gguf", tiny, "--type", "IQ4_XS", "-o", tmp_path / "b"), "--engine llamacpp")
    assert_one_line_error(cli("gguf", tiny, "--type", "IQ2_XXS", "--engine", "llamacpp", "-o", tmp_path / "c"), "imatrix")
    assert_one_line_error(cli("gguf", tiny, "--imatrix-file", tmp_path / "none.gguf", "-o", tmp_path / "d"), "none.gguf")
    assert not any(tmp_path.iterdir())


# -- the real model ----------------------------------------------------------------------------

SMOL_TYPES = ["F16", "Q8_0", "Q4_0", "Q4_K_M", "Q6_K", "Q3_K_M", "Q2_K", "Q5_K_S"]


@pytest.fixture(scope="module")
def smol_gguf(tmp_path_factory, smollm2):
    from quantkit.pipeline import convert

    out = tmp_path_factory.mktemp("smolgguf") / "smol-GGUF"
    folder, _ = convert("gguf", str(smollm2), out, show_progress=False, options={"type": ",".join(SMOL_TYPES)})
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("typ", SMOL_TYPES[1:])
def test_smollm2_tensors_match_llamacpp(smol_gguf, tmp_path, typ):
    ref = tmp_path / f"ref-{typ}.gguf"
    llamacpp.quantize(smol_gguf / "SmolLM2-135M-Instruct-F16.gguf", ref, typ)
    check_blocks(compare_with_llamacpp(smol_gguf / f"SmolLM2-135M-Instruct-{typ}.gguf", ref))


@pytest.mark.slow
def test_smollm2_answers_and_tokenizes_like_hf(smol_gguf, smollm2, tmp_path):
    from transformers import AutoTokenizer

    from quantkit.text import default_text

    hf = AutoTokenizer.from_pretrained(smollm2)
    text = default_text("evaluation")
    llm = llamacpp.load(smol_gguf / "SmolLM2-135M-Instruct-Q8_0.gguf", n_ctx=256, logits_all=False)
    ours = llm.tokenize(text.encode(), add_bos=False, special=False)
    assert ours == hf(text, add_special_tokens=False).input_ids
    chat = hf.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                  add_generation_prompt=True)
    assert llm.tokenize(chat.encode(), add_bos=False, special=True) == hf(chat, add_special_tokens=False).input_ids

    def answer(path) -> str:
        llm = llamacpp.load(path, n_ctx=256, logits_all=False)
        return llm(chat, max_tokens=24, temperature=0.0)["choices"][0]["text"]

    for typ in ("F16", "Q8_0"):
        text = answer(smol_gguf / f"SmolLM2-135M-Instruct-{typ}.gguf")
        assert "Paris" in text, (typ, text)
    # this 135M model (already on a Q4_1 grid) loses the answer at Q6_K and Q4_K_M;
    # llama.cpp's own files of those types say exactly what ours say
    for typ in ("Q6_K", "Q4_K_M"):
        ref = tmp_path / f"ref-{typ}.gguf"
        llamacpp.quantize(smol_gguf / "SmolLM2-135M-Instruct-F16.gguf", ref, typ)
        assert answer(smol_gguf / f"SmolLM2-135M-Instruct-{typ}.gguf") == answer(ref), typ


@pytest.mark.slow
def test_smollm2_q4_k_m_ppl_equals_llamacpp_own(cli, smol_gguf, smollm2, tmp_path):
    """llama.cpp's PPL on our Q4_K_M equals its PPL on its own Q4_K_M of the same source within 0.1%."""
    ref = tmp_path / "llamacpp-Q4_K_M.gguf"
    llamacpp.quantize(smol_gguf / "SmolLM2-135M-Instruct-F16.gguf", ref, "Q4_K_M")
    ours = smol_gguf / "SmolLM2-135M-Instruct-Q4_K_M.gguf"
    r = cli("verify", ours, ref, "--source", smollm2, "--runtime", "llamacpp", "--tokens", "4096",
            "--no-record", "--json", "--chart", tmp_path / "c.png")
    assert r.code == 0, r.err
    a, b = r.json
    assert a["tokens_scored"] == b["tokens_scored"] > 1500
    assert abs(a["ppl_quant"] / b["ppl_quant"] - 1) < 0.001, (a["ppl_quant"], b["ppl_quant"])
    assert a["ppl_ratio"] < 1.5 and math.isfinite(a["kld_mean"])


@pytest.mark.slow
def test_smollm2_vram_within_one_percent(smol_gguf, smollm2):
    from quantkit.memory import weight_bytes

    cfg = json.loads((smollm2 / "config.json").read_text())
    for t in SMOL_TYPES:
        f = smol_gguf / f"SmolLM2-135M-Instruct-{t}.gguf"
        predicted, _ = weight_bytes(cfg, f"gguf:{t}")
        assert predicted == tensor_bytes(f), t
        # the rest of the file is the vocabulary (49,152 tokens, merges) and metadata
        assert abs(predicted - f.stat().st_size) / f.stat().st_size < 0.03, (t, predicted, f.stat().st_size)


def test_type_mixes_match_llamacpp_on_other_shapes(tiny, tmp_path):
    """A 16-layer, 4-queries-per-KV-head model with tied embeddings: llama.cpp's quantizer picks,
    for every tensor and file type, the type quantkit's rules pick (use_more_bits spread, the
    n_gqa >= 4 rule of Q2_K, tied token_embd treated as the output), and vram predicts its bytes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantkit.pipeline import convert
    from quantkit.memory import weight_bytes

    src = tmp_path / "gqa4"
    torch.manual_seed(1)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=16, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(src)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(tiny / name, src / name)
    folder, _ = convert("gguf", str(src), tmp_path / "out", show_progress=False, options={"type": "F16"})
    f16 = folder / "gqa4-F16.gguf"
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape.tolist())) for t in gguf.GGUFReader(str(f16)).tensors}
    config = json.loads((src / "config.json").read_text())
    for typ in ALL_TYPES[2:]:
        ref = tmp_path / f"{typ}.gguf"
        llamacpp.quantize(f16, ref, typ)
        theirs = llamacpp.tensor_types(ref)
        ours = {n: mix.tensor_type(typ, n, shapes[n], n_layer=16, n_head=8, n_head_kv=2, tied=True) for n in theirs}
        assert ours == theirs, (typ, {n: (ours[n], theirs[n]) for n in theirs if ours[n] != theirs[n]})
        assert weight_bytes(config, f"gguf:{typ}")[0] == tensor_bytes(ref), typ


def test_rows_straddling_read_chunks(tiny_gguf, tiny, tmp_path, monkeypatch):
    """Tensors stream from the shards in raw chunks; with chunks that cut rows in odd places the
    files are byte-identical to those written from whole tensors."""
    from quantkit import stio
    from quantkit.pipeline import convert

    monkeypatch.setattr(stio, "CHUNK", 1000)  # 1000 bytes: no row of the tiny model fits evenly
    folder, _ = convert("gguf", str(tiny), tmp_path / "small-chunks", show_progress=False, options={"type": "BF16,Q4_K_M"})
    for t in ("BF16", "Q4_K_M"):
        name = f"tiny-llama-{t}.gguf"
        assert (folder / name).read_bytes() == (tiny_gguf[0] / name).read_bytes(), t


def test_eval_records_each_file(cli, tiny, tmp_path):
    r = cli("gguf", tiny, "--type", "Q8_0,Q2_K", "--eval", "--eval-tokens", "2048", "-o", tmp_path / "o", "--json")
    assert r.code == 0, r.err
    figures = r.json["verify_files"]
    assert set(figures) == {"tiny-llama-Q8_0.gguf", "tiny-llama-Q2_K.gguf"}
    q8, q2 = figures["tiny-llama-Q8_0.gguf"], figures["tiny-llama-Q2_K.gguf"]
    assert abs(q8["ppl_ratio"] - 1) < 0.01 and q8["kld_mean"] < q2["kld_mean"]
    assert json.loads((tmp_path / "o" / "quantkit.json").read_text())["verify_files"] == figures
