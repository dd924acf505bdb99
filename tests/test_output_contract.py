"""Outputs appear whole or not at all: crash, Ctrl-C and SIGKILL leave nothing that looks complete."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import assert_one_line_error
from transformers import LlamaConfig, LlamaForCausalLM

import quantkit.backends.fp8.stream as fp8


def visible(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_nothing(cli, tiny, tmp_path, monkeypatch, exc):
    calls = {"n": 0}
    real = fp8.quantize_rows

    def failing(w):
        calls["n"] += 1
        if calls["n"] == 5:
            raise exc
        return real(w)

    monkeypatch.setattr(fp8, "quantize_rows", failing)
    if isinstance(exc, KeyboardInterrupt):
        r = cli("fp8", tiny, "-o", tmp_path / "out")
        assert_one_line_error(r, "interrupted", "removed")
        assert r.code == 130
    else:
        with pytest.raises(RuntimeError):
            cli("fp8", tiny, "-o", tmp_path / "out")
    assert calls["n"] == 5
    assert visible(tmp_path) == []


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A checkpoint big enough (~250 MB) that a conversion can be killed half way."""
    d = tmp_path_factory.mktemp("wide")
    cfg = LlamaConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=8, vocab_size=1024)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d)
    return d


def test_sigkill_leaves_no_output_and_rerun_cleans_up(wide_model, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "quantkit", "fp8", str(wide_model), "-o", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = None
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        found = [q for q in tmp_path.glob(".out.partial-*") if (q / "model.safetensors").exists()]
        if found and (found[0] / "model.safetensors").stat().st_size > 10_000_000:
            partial = found[0]
            break
        time.sleep(0.02)
    assert partial is not None, "conversion finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not out.exists()
    assert partial.exists()  # SIGKILL cannot clean up; the name says it is partial
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert visible(tmp_path) == ["out"]
    assert (out / "quantkit.json").is_file()


def test_sigterm_cleans_up(wide_model, tmp_path):
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "quantkit", "fp8", str(wide_model), "-o", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if any((q / "model.safetensors").exists() for q in tmp_path.glob(".out.partial-*")):
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate()
    if p.returncode == 0:
        pytest.skip("conversion finished before SIGTERM arrived")
    assert p.returncode == 130
    assert "SIGTERM" in err and "Traceback" not in err
    assert visible(tmp_path) == []
