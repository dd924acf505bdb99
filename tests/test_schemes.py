"""The compressed-tensors schemes beyond FP8-dynamic and INT4 (fp8 --scheme FP8_BLOCK, nvfp4, mxfp4, int8):
every tensor and the config block equal llm-compressor's model_free_ptq; verify scores each as its runtime
runs it, checked against an emulation written here from the formats' definitions (not compressed-tensors'
code); vram counts the bytes the files hold; the card, inspect and errors know each scheme."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import assert_same_tensors, load_tensors

from conftest import assert_one_line_error
from quantkit import scoring
from test_streaming import FIGURES, _whole_model_figures

SCHEMES = {"FP8_BLOCK": "fp8", "NVFP4A16": "nvfp4", "MXFP4": "mxfp4", "MXFP4A16": "mxfp4", "W8A8": "int8", "W8A16": "int8"}
IGNORE = ["lm_head", "re:.*embed_tokens"]


def reference(src: Path, out: Path, scheme: str) -> Path:
    from llmcompressor import model_free_ptq

    model_free_ptq(str(src), str(out), scheme=scheme, ignore=IGNORE, device="cpu")
    return out


def quant_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())["quantization_config"]


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory) -> dict[str, Path]:
    """Every scheme written by quantkit from the tiny model (in this process, as the CLI does)."""
    from quantkit.pipeline import convert

    root = tmp_path_factory.mktemp("schemes")
    out = {}
    for scheme, command in SCHEMES.items():
        folder, _ = convert(command, str(tiny), root / scheme, False, False, show_progress=False,
                            notice=lambda m: None, options={"scheme": scheme})
        out[scheme] = folder
    return out


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tiny_equals_model_free_ptq(made, tiny, tmp_path, scheme):
    ours = made[scheme]
    ref = reference(tiny, tmp_path / "ref", scheme)
    assert_same_tensors(load_tensors(ours), load_tensors(ref))
    assert quant_config(ours) == quant_config(ref)
    t = load_tensors(ours)
    assert t["model.embed_tokens.weight"].dtype == t["lm_head.weight"].dtype == torch.bfloat16
    assert "model.layers.0.self_attn.q_proj.weight" not in t or t["model.layers.0.self_attn.q_proj.weight"].dtype != torch.bfloat16
    m = json.loads((ours / "quantkit.json").read_text())
    assert m["backend"] == SCHEMES[scheme] and m["parameters"]["scheme"] == scheme
    assert m["parameters"]["quantized_tensors"] == 7 * 4  # seven Linears in each of the four layers
    assert (ours / "tokenizer.json").is_file()


def test_fused_sets_across_shards(tiny, tmp_path):
    """NVFP4's q/k/v and gate/up share a global scale: with members in different shards the tensors still
    equal model_free_ptq's, and the index names every tensor where it lies."""
    from transformers import LlamaForCausalLM

    from quantkit.source import resolve

    sharded = tmp_path / "sharded"
    LlamaForCausalLM.from_pretrained(tiny, dtype=torch.bfloat16).save_pretrained(sharded, max_shard_size="300KB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (sharded / f).write_bytes((tiny / f).read_bytes())
    src = resolve(str(sharded))
    where = {n: f.name for f in src.weight_files for n in src.headers[f.name].tensors}
    qkv = [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(4) for p in "qkv"]
    assert any(len({where[n] for n in qkv[i:i + 3]}) > 1 for i in range(0, 12, 3))  # a set really is split
    from quantkit.pipeline import convert

    ours, _ = convert("nvfp4", str(sharded), tmp_path / "ours", False, False, show_progress=False,
                      notice=lambda m: None, options={"scheme": "NVFP4A16"})
    ref = reference(sharded, tmp_path / "ref", "NVFP4A16")
    mine = load_tensors(ours)
    assert_same_tensors(mine, load_tensors(ref))
    index = json.loads((ours / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(mine)
    for name, shard in index["weight_map"].items():
        from safetensors import safe_open

        with safe_open(ours / shard, "pt") as f:
            assert name in f.keys()
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in mine.values())
    for i in range(4):  # one global scale for q, k and v
        g = [mine[f"model.layers.{i}.self_attn.{p}_proj.weight_global_scale"] for p in "qkv"]
        assert torch.equal(g[0], g[1]) and torch.equal(g[0], g[2])


@pytest.mark.slow
def test_smollm2_equals_model_free_ptq(smollm2, tmp_path):
    from quantkit.pipeline import convert

    # FP8_BLOCK is left out: SmolLM2's 576 columns are not a multiple of 128, and model_free_ptq (0.14.0.1)
    # itself fails there, saving a non-contiguous weight (safetensors refuses it); quantkit's output is written
    # W8A16's groups of 128 cannot take 576 columns either: refused before any work (the error is the library's reason)
    from quantkit.errors import OptionError

    with pytest.raises(OptionError, match="W8A16.*576"):
        convert("int8", str(smollm2), tmp_path / "w8a16", False, False, show_progress=False,
                notice=lambda m: None, options={"scheme": "W8A16"})
    assert not (tmp_path / "w8a16").exists()
    for scheme, command in ((s, c) for s, c in SCHEMES.items() if s not in ("FP8_BLOCK", "W8A16")):
        ours, _ = convert(command, str(smollm2), tmp_path / scheme, False, False, show_progress=False,
                          notice=lambda m: None, options={"scheme": scheme})
        ref = reference(smollm2, tmp_path / f"{scheme}-ref", scheme)
        assert_same_tensors(load_tensors(ours), load_tensors(ref))
        assert quant_config(ours) == quant_config(ref), scheme


# ---- verify: an emulation from the formats' definitions -------------------------------------------

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])  # FP4 (E2M1) magnitudes, by their 3 low bits


def fp4_unpack(packed: torch.Tensor) -> torch.Tensor:
    """Two FP4 codes a byte, the first in the low nibble; bit 3 is the sign."""
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(packed.shape[0], -1).long()
    mag = E2M1[codes & 7]
    return torch.where(codes >= 8, -mag, mag)


def fp4_round(x: torch.Tensor) -> torch.Tensor:
    """x (already divided by its scale) to the nearest FP4 value, ties to the even code (IEEE's rule, as
    OCP MX specifies), saturating at 6."""
    mag = x.abs().clamp(max=6.0)
    low = (mag[..., None] >= E2M1).sum(-1) - 1  # the largest code whose value is at most mag
    high = (low + 1).clamp(max=7)
    d_low, d_high = mag - E2M1[low], E2M1[high] - mag
    pick = torch.where((d_high < d_low) | ((d_high == d_low) & (high % 2 == 0)), high, low)
    return torch.copysign(E2M1[pick], x)


def dense_weight(t: dict, p: str, scheme: str) -> torch.Tensor:
    if scheme.startswith("MXFP4"):  # power-of-two scale 2^(e - 127) per 32 weights
        q = fp4_unpack(t[p + "weight_packed"])
        return q * torch.pow(2.0, t[p + "weight_scale"].float() - 127).repeat_interleave(32, 1)
    if scheme == "NVFP4A16":  # FP8 scale per 16 weights, divided by the tensor's global scale
        q = fp4_unpack(t[p + "weight_packed"])
        return q * (t[p + "weight_scale"].float() / t[p + "weight_global_scale"].float()).repeat_interleave(16, 1)
    if scheme == "FP8_BLOCK":  # one scale per 128 x 128 block
        s = t[p + "weight_scale"].float().repeat_interleave(128, 0).repeat_interleave(128, 1)
        w = t[p + "weight"]
        return w.float() * s[: w.shape[0], : w.shape[1]]
    if scheme == "W8A8":
        return t[p + "weight"].float() * t[p + "weight_scale"].float()
    if scheme == "W8A16":  # INT8 codes + 128, four to an int32, low byte first; a scale per 128 of a row
        rows, cols = (int(v) for v in t[p + "weight_shape"])
        codes = t[p + "weight_packed"].view(torch.uint8).reshape(rows, -1)[:, :cols].to(torch.int16) - 128
        return codes.float() * t[p + "weight_scale"].float().repeat_interleave(128, 1)[:, :cols]
    raise AssertionError(scheme)


def act_quant(scheme: str):
    """The input quantization of each scheme as its format defines it, per token (and group)."""
    def groups(x, n):
        return x.reshape(*x.shape[:-1], x.shape[-1] // n, n)

    if scheme == "MXFP4":  # OCP MX: shared exponent = that of the group max rounded to a power of two, minus 2
        def q(x):
            g = groups(x, 32)
            amax = g.abs().amax(-1, keepdim=True).clamp_min(2.0 ** -126)
            e = torch.floor(torch.log2(amax))
            e = torch.where(amax / torch.pow(2.0, e) >= 1.75, e + 1, e)  # rounded up from 1.75 x 2^e
            scale = torch.pow(2.0, e - 2)
            return (fp4_round(g / scale) * scale).reshape(x.shape)
        return q
    if scheme == "FP8_BLOCK":  # FP8 per 128 columns of each token
        def q(x):
            g = groups(x, 128)
            scale = g.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).eps) / 448.0
            return ((g / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale).reshape(x.shape)
        return q
    if scheme == "W8A8":  # INT8 per token, symmetric: vLLM's dynamic_scaled_int8_quant (scale absmax / 127)
        def q(x):
            absmax = x.abs().amax(-1, keepdim=True)
            return torch.round(x * (127.0 / absmax)).clamp(-128, 127) * (absmax / 127.0)
        return q
    return None


class Emulated:
    """The tiny model in float32 with each quantized Linear's weight decoded here and its input quantized here."""

    def __init__(self, src: Path, folder: Path, scheme: str):
        from transformers import AutoModelForCausalLM

        t = load_tensors(folder)
        self.model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
        quant = act_quant(scheme)
        for name, mod in self.model.named_modules():
            if isinstance(mod, torch.nn.Linear) and f"{name}.weight_scale" in t:
                mod.weight.data = dense_weight(t, name + ".", scheme)
                if quant is not None:
                    mod.register_forward_pre_hook(lambda m, a, q=quant: (q(a[0]),))

    @torch.inference_mode()
    def logits(self, ids):
        return self.model(torch.tensor([ids])).logits[0].float()


def test_w8a16_packing_reads_back(made, tiny):
    """The emulation's INT8 unpacking gives back the weights: close to the source (and not equal to it)."""
    from safetensors.torch import load_file

    t = load_tensors(made["W8A16"])
    src = load_file(tiny / "model.safetensors")
    p = "model.layers.1.mlp.down_proj."
    w = dense_weight(t, p, "W8A16")
    err = (w - src[p + "weight"].float()).abs().max() / src[p + "weight"].float().abs().max()
    assert 0 < err < 0.01


@pytest.mark.parametrize("scheme", SCHEMES)
def test_verify_scores_each_scheme_as_its_runtime_runs_it(made, tiny, scheme):
    ctx, tokens = 64, 640
    streamed = scoring.verify([made[scheme]], tiny, ctx=ctx, max_tokens=tokens)[0]
    want = _whole_model_figures(tiny, [Emulated(tiny, made[scheme], scheme)], ctx, tokens)[0]
    for k in FIGURES:
        assert math.isclose(getattr(streamed, k), want[k], rel_tol=1e-4, abs_tol=1e-7), (k, getattr(streamed, k), want[k])
    assert streamed.kld_mean > 1e-6  # the quantization is visible
    if act_quant(scheme) is None:
        assert streamed.activations.startswith("unquantized")
    else:
        assert "dynamic" in streamed.activations and "as vLLM does" in streamed.activations


def test_activations_are_really_quantized(made, tiny):
    """Without the input step the emulation's figures move: the step verify applies is not a no-op."""
    ctx, tokens = 64, 640
    streamed = scoring.verify([made["MXFP4"]], tiny, ctx=ctx, max_tokens=tokens)[0]
    weights_only = Emulated(tiny, made["MXFP4"], "MXFP4A16")  # the same weights, inputs left alone
    want = _whole_model_figures(tiny, [weights_only], ctx, tokens)[0]
    assert not math.isclose(streamed.kld_mean, want["kld_mean"], rel_tol=1e-3)


# ---- what the other commands know ----------------------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
def test_vram_counts_the_bytes_the_files_hold(cli, made, scheme):
    """vram's weight bytes for the scheme, from config.json alone, equal the tensors written."""
    folder = made[scheme]
    kind = "fp8-block" if scheme == "FP8_BLOCK" else scheme.lower()
    r = cli("vram", folder / "config.json", "--format", kind, "--json")
    assert r.code == 0, r.err
    held = sum(t.nbytes for t in load_tensors(folder).values())
    weights = r.json["weights_bytes"]
    assert abs(weights - held) <= 16 * 4 * 7 * 4 + 64, (weights, held)  # W8A16's weight_shape rows at most


@pytest.mark.parametrize("scheme", SCHEMES)
def test_inspect_and_card_name_the_scheme(cli, made, scheme):
    r = cli("inspect", made[scheme], "--json")
    assert r.code == 0, r.err
    name = {"FP8_BLOCK": "FP8-block", "W8A8": "INT8 W8A8", "W8A16": "INT8 W8A16"}.get(scheme, scheme)
    assert r.json["format"] == f"compressed-tensors {name}"
    card = (made[scheme] / "README.md").read_text()
    assert "vllm" in card.lower() and scheme.replace("_", "-").split("-")[0][:4] in card.replace("_", "-")


def test_shape_the_scheme_cannot_take_is_one_line(cli, tmp_path, tiny):
    """A Linear whose input size no 32-group divides is refused before any work, naming the option."""
    from transformers import LlamaConfig, LlamaForCausalLM

    src = tmp_path / "odd"
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=80, intermediate_size=200, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=1024)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(src)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (src / f).write_bytes((tiny / f).read_bytes())
    r = cli("mxfp4", src, "-o", tmp_path / "out")
    assert_one_line_error(r, "--scheme", "MXFP4")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_transformers_loads_each_scheme(made, tiny, scheme):
    """transformers with compressed-tensors loads every artifact on CPU in BF16 (the card's snippet,
    dtype="auto"), and its logits are this file's emulation's, up to BF16 compute."""
    from transformers import AutoModelForCausalLM

    ids = [1] + list(range(5, 100))
    with torch.inference_mode():
        got = AutoModelForCausalLM.from_pretrained(made[scheme], dtype="auto").eval()(torch.tensor([ids])).logits[0].float()
    want = Emulated(tiny, made[scheme], scheme).logits(ids)
    assert torch.isfinite(got).all()
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert cos > 0.97, cos  # BF16 compute of FP4 inputs on a random model: 0.98 seen for MXFP4
