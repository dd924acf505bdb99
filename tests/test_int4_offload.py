"""INT4 calibration through compressed-tensors' disk offload (the default) gives the same bytes as the
whole model loaded in RAM (QUANTKIT_INT4_IN_RAM=1); the offload folder goes away; the thread count
chosen is the one used, recorded and given back."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import assert_same_tensors, load_tensors
from quantkit.backends.int4 import calibrate

FAST = ["--samples", "8", "--seq-len", "128"]


@pytest.fixture(scope="module")
def tied(tiny, tmp_path_factory) -> Path:
    """A two-layer model whose head is its embedding (SmolLM2 is so): one tensor shared by two modules."""
    from transformers import LlamaConfig, LlamaForCausalLM

    src = tmp_path_factory.mktemp("tied")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(src)
    for f in ("tokenizer.model", "tokenizer_config.json", "tokenizer.json"):
        if (tiny / f).exists():
            shutil.copy(tiny / f, src / f)
    return src


@pytest.fixture
def spy(monkeypatch):
    """What load_model was given and made: the offload folder, where the weights live, the torch threads."""
    seen = []
    original = calibrate.load_model

    def load_model(path, offload):
        model = original(path, offload)
        up = model.model.layers[0].mlp.up_proj
        seen.append({"offload": offload, "folder_exists": offload is not None and offload.is_dir(),
                     "cache": type(up._parameters).__name__, "threads": torch.get_num_threads()})
        return model

    monkeypatch.setattr(calibrate, "load_model", load_model)
    return seen


@pytest.mark.parametrize("method, model", [("gptq", "tiny"), ("awq", "tiny"), ("gptq", "tied")])
def test_offload_gives_the_in_ram_bytes(cli, request, tmp_path, monkeypatch, spy, method, model):
    src = request.getfixturevalue(model)
    extra = ["--grid", "4"] if method == "awq" else []
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # GPTQ's rounding depends on it: the same for both runs
    before = torch.get_num_threads()
    r = cli(method, src, "-o", tmp_path / "offload", "--json", *FAST, *extra)
    assert r.code == 0, r.err
    assert "offloaded" not in r.err  # accelerate's notice about meta tensors is kept off stderr
    monkeypatch.setenv(calibrate.IN_RAM_ENV, "1")
    r2 = cli(method, src, "-o", tmp_path / "in-ram", "--json", *FAST, *extra)
    assert r2.code == 0, r2.err

    on_disk, in_ram = spy
    assert on_disk["cache"] == "DiskCache" and on_disk["folder_exists"]  # really calibrated from disk
    assert in_ram["offload"] is None and in_ram["cache"] == "dict"
    assert on_disk["threads"] == in_ram["threads"] == 1
    assert torch.get_num_threads() == before  # given back
    assert not on_disk["offload"].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in-ram", "offload"]  # nothing left beside the outputs

    a, b = tmp_path / "offload", tmp_path / "in-ram"
    assert sorted(p.name for p in a.glob("*.safetensors")) == ["model.safetensors"]
    assert sorted(p.name for p in b.glob("*.safetensors")) == ["model.safetensors"]
    tensors = load_tensors(a)
    assert_same_tensors(tensors, load_tensors(b))
    assert ("lm_head.weight" in tensors) == (model == "tiny")  # a tied head is stored once, as the embedding
    assert (a / "config.json").read_text() == (b / "config.json").read_text()
    for folder in (a, b):
        assert json.loads((folder / "quantkit.json").read_text())["parameters"]["threads"] == 1


def test_offload_folder_removed_when_calibration_fails(cli, tiny, tmp_path, monkeypatch, spy):
    import llmcompressor

    from quantkit import output

    hooks = list(output.CHILDREN)
    gone_on_sigterm = []

    def broken(**kw):
        for stop in output.CHILDREN:  # what quantkit's SIGTERM handler calls before it exits
            stop()
        gone_on_sigterm.append(not spy[0]["offload"].exists())
        raise RuntimeError("calibration broke")

    monkeypatch.setattr(llmcompressor, "oneshot", broken)
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="calibration broke"):  # a bug, not a user error: it propagates
        cli("gptq", tiny, "-o", tmp_path / "out", *FAST)
    assert spy[0]["folder_exists"] and gone_on_sigterm == [True]
    assert list(tmp_path.iterdir()) == []  # neither the partial output nor the offload folder beside it
    assert torch.get_num_threads() == before and output.CHILDREN == hooks


def test_threads(monkeypatch):
    import os

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert calibrate.threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert 1 <= calibrate.threads() <= len(os.sched_getaffinity(0))


def test_free_disk_counts_the_offload_folder(cli, tiny, tmp_path, monkeypatch):
    """Room for the output alone is not enough: the offload folder (every weight in float32 on the CPU,
    twice the BF16 source) lies beside it while calibrating."""
    import quantkit.output
    from quantkit.source import resolve

    weights = resolve(str(tiny)).weight_bytes
    real = shutil.disk_usage
    room = weights  # twice the INT4 output, half the float32 offload folder
    monkeypatch.setattr(quantkit.output.shutil, "disk_usage", lambda p: real(p)._replace(free=room))
    r = cli("gptq", tiny, "-o", tmp_path / "out", *FAST)
    assert r.code != 0 and "not enough free disk" in r.err and "working files" in r.err, r.err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv(calibrate.IN_RAM_ENV, "1")  # no offload folder: the same room is enough
    r = cli("gptq", tiny, "-o", tmp_path / "out", *FAST)
    assert r.code == 0, r.err
