"""The streaming module (quantkit/streaming): every format quantkit reads, run one decoder layer at a
time, gives verify the figures that the whole model loaded in transformers gives (loaders.py is that
reference: the in-memory loaders verify used before), hidden states spill to disk above a budget,
and a GPU that is not there is refused in one line."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error
from quantkit import loaders, scoring
from quantkit.streaming import States

CTX, TOKENS = 64, 640
FIGURES = ("ppl_source", "ppl_quant", "kld_mean", "kld_p99", "top1_agreement")


def _quantkit(*args) -> None:
    r = subprocess.run([sys.executable, "-m", "quantkit", *map(str, args), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def artifacts(tiny, tmp_path_factory):
    """One artifact of every format verify reads, from the tiny model."""
    root = tmp_path_factory.mktemp("stream")
    cal = ["--samples", "4", "--seq-len", "64"]
    made = {
        "fp8": ["fp8"],
        "gptq-ct": ["gptq", *cal],
        "gptq-autogptq": ["gptq", *cal, "--format", "gptq"],
        "awq-autoawq": ["awq", *cal, "--grid", "4", "--format", "awq"],
        "exl2": ["exl2", "--bpw", "4.0", "--rows", "2", "--length", "128", "--measurement-rows", "2",
                 "--measurement-length", "128"],
        "gguf": ["gguf", "--type", "Q4_K_M"],
    }
    out = {}
    for name, args in made.items():
        _quantkit(args[0], tiny, "-o", root / name, *args[1:])
        out[name] = root / name
    out["gguf"] = next((root / "gguf").glob("*.gguf"))
    return out


def _whole_model_figures(src, arts, ctx: int, tokens: int) -> list[dict]:
    """The figures with every model loaded whole (loaders.load), window by window; an entry of `arts` may
    also be an object with logits(ids) (tests/test_schemes.py's emulations)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    text, _ = scoring.load_text(None, "evaluation")
    chunks = scoring.windows(scoring.tokenize(tok, text, tokens), ctx, tok.bos_token_id)
    source = loaders.load(src)
    models = [a if hasattr(a, "logits") else loaders.load(a) for a in arts]  # a path, or a model given as logits(ids)
    tallies, src_nll, first = [scoring.Tally() for _ in models], [], ctx // 2
    for c in chunks:
        target = torch.tensor(c[first + 1:])
        ls = torch.log_softmax(source.logits(c)[first:-1], -1)
        src_nll.append(-ls.gather(1, target[:, None])[:, 0].double().numpy())
        for m, t in zip(models, tallies):
            t.add_window(ls, torch.log_softmax(m.logits(c)[first:-1], -1), target)
    return [scoring._summary(np.concatenate(src_nll), t) for t in tallies]


def _assert_close(streamed, whole, rel: float) -> None:
    for r, ref in zip(streamed, whole):
        for k in FIGURES:
            assert math.isclose(getattr(r, k), ref[k], rel_tol=rel, abs_tol=1e-9), (r.artifact, k, getattr(r, k), ref[k])


def test_every_format_streams_to_the_whole_model_figures(tiny, artifacts):
    arts = list(artifacts.values())
    streamed = scoring.verify(arts, tiny, ctx=CTX, max_tokens=TOKENS)  # all in one lockstep pass
    _assert_close(streamed, _whole_model_figures(tiny, arts, CTX, TOKENS), 1e-4)
    by_name = {r.artifact: r for r in streamed}
    assert "dynamic" in by_name[str(artifacts["fp8"])].activations  # FP8 activations quantized as vLLM does
    assert "AutoGPTQ" in by_name[str(artifacts["gptq-autogptq"])].activations
    assert all("one decoder layer at a time" in r.method for r in streamed)


def test_states_spill_to_disk_with_the_same_figures(tiny, artifacts, monkeypatch):
    arts = [artifacts["fp8"], artifacts["exl2"]]
    in_memory = scoring.verify(arts, tiny, ctx=CTX, max_tokens=TOKENS)
    monkeypatch.setenv("QUANTKIT_STATE_BUDGET_MB", "0")
    on_disk = scoring.verify(arts, tiny, ctx=CTX, max_tokens=TOKENS)
    for a, b in zip(in_memory, on_disk):
        assert a.figures() == b.figures()


def test_states_store_round_trips_and_cleans_up():
    x = [torch.randn(1, 8, 4) for _ in range(3)]
    with States(3, (1, 8, 4), limit=0) as s:
        assert s.on_disk
        folder = s._dir
        for i, t in enumerate(x):
            s[i] = t
        assert all(torch.equal(s[i], t) for i, t in enumerate(x))
        with pytest.raises(ValueError):
            s[0] = torch.zeros(2, 8, 4)
    import os

    assert not os.path.exists(folder)
    with States(3, (1, 8, 4)) as s:
        assert not s.on_disk


@pytest.mark.slow
def test_smollm2_fp8_streams_to_the_whole_model_figures(smollm2, tmp_path):
    _quantkit("fp8", smollm2, "-o", tmp_path / "fp8")
    streamed = scoring.verify([tmp_path / "fp8"], smollm2, ctx=256, max_tokens=1024)
    _assert_close(streamed, _whole_model_figures(smollm2, [tmp_path / "fp8"], 256, 1024), 1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
def test_device_without_a_gpu_is_one_line(cli, tiny, artifacts):
    r = cli("verify", artifacts["fp8"], "--source", tiny, "--device", "cuda", "--no-record")
    assert_one_line_error(r, "--device cuda", "no CUDA GPU")
    r = cli("verify", artifacts["fp8"], "--source", tiny, "--device", "tpu", "--no-record")
    assert_one_line_error(r, "--device tpu", "choose auto, cpu, cuda")
