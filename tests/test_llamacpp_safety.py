"""llama.cpp on CPUs with AMX: extra buffer types off in every load, and a native crash is one line.

llama-cpp-python 0.3.36 built on a CPU with AMX repacks quantized weights into llama.cpp's
"AMX" buffer type and segfaults in llama_decode. quantkit turns extra buffer types off
(QUANTKIT_LLAMACPP_EXTRA_BUFTS=1 turns them back on) and runs the quantizer and the verify
runtime in a child process.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error

llama_cpp = pytest.importorskip("llama_cpp")

from quantkit.backends.gguf import llamacpp  # noqa: E402
from quantkit.errors import QuantkitError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
AMX = "amx_tile" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False

# Prints llama.cpp's own log of loading one GGUF, through quantkit's loader, in a fresh process.
LOAD_LOG = """
import sys
from quantkit.backends.gguf import llamacpp
llm = llamacpp.load(sys.argv[1], n_ctx=64, logits_all=False, verbose=True)
print("loaded", llm.n_vocab(), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def q4_0(tmp_path_factory, tiny) -> Path:
    """Q4_0: the type llama.cpp repacks on x86 (CPU_REPACK with AVX2, AMX where the CPU has it)."""
    from quantkit.pipeline import convert

    folder, _ = convert("gguf", str(tiny), tmp_path_factory.mktemp("g") / "g", show_progress=False,
                        options={"type": "Q4_0"})
    return next(folder.glob("*.gguf"))


def load_log(path: Path, extra: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != llamacpp.EXTRA_BUFTS_ENV}
    env[llamacpp.LOG_ENV] = "1"
    if extra:
        env[llamacpp.EXTRA_BUFTS_ENV] = "1"
    r = subprocess.run([sys.executable, "-c", LOAD_LOG, str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "loaded" in r.stderr
    return r.stderr


def extra_buffers(log: str) -> list[str]:
    """The model buffers llama.cpp reports that are not plain CPU memory (CPU_REPACK, AMX, ...)."""
    names = re.findall(r"(\S+) model buffer size", log)
    assert names, "llama.cpp's log names no model buffer: the test reads the wrong log"
    return [n for n in names if n not in ("CPU", "CPU_Mapped")]


def test_default_load_uses_no_extra_buffer_types(q4_0):
    assert extra_buffers(load_log(q4_0, extra=False)) == []


def test_extra_buffer_types_back_on_when_asked(q4_0):
    """The other half of the proof: the same log shows repacking when the setting is turned back on,
    so the test above would see it if the setting stopped reaching the load."""
    found = extra_buffers(load_log(q4_0, extra=True))
    if not found:
        pytest.skip("this llama.cpp build has no extra CPU buffer type for Q4_0 on this CPU")
    assert any(n in ("CPU_REPACK", "AMX") for n in found), found


def test_every_llamacpp_load_goes_through_quantkit():
    """No code of ours, tests or bench loads a model in llama.cpp but through llamacpp.model_params()."""
    offenders = []
    for folder in ("quantkit", "tests", "bench"):
        for f in (ROOT / folder).rglob("*.py"):
            if f == ROOT / "quantkit/backends/gguf/llamacpp.py" or f == Path(__file__).resolve():
                continue
            for n, line in enumerate(f.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if re.search(r"\bLlama\(|llama_model_default_params\(|llama_load_model_from_file\(", code) or (
                        "llama_model_load_from_file(" in code and "llamacpp.model_params(" not in code):
                    offenders.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_model_params_default_and_override(monkeypatch):
    monkeypatch.delenv(llamacpp.EXTRA_BUFTS_ENV, raising=False)
    assert llamacpp.model_params().use_extra_bufts is False
    assert llamacpp.model_params(vocab_only=True).vocab_only is True
    monkeypatch.setenv(llamacpp.EXTRA_BUFTS_ENV, "1")
    assert llamacpp.model_params().use_extra_bufts is True


def test_runtime_crash_is_one_error(q4_0):
    """The verify runtime lives in a child process: a native crash there (here: a real SIGSEGV sent
    to it) is a QuantkitError naming the signal, and quantkit goes on."""
    rt = llamacpp.Runtime(q4_0, n_ctx=64)
    assert rt.logits([1, 2, 3]).shape == (3, rt.n_vocab)
    os.kill(rt.pid, signal.SIGSEGV)
    rt._proc.wait(10)
    with pytest.raises(QuantkitError, match=r"llama.cpp crashed \(SIGSEGV\) while scoring"):
        rt.logits([1, 2, 3])


def test_runtime_logits_equal_in_process(q4_0):
    import numpy as np

    ids = [1, 5, 9, 13, 17, 21, 25, 29]
    rt = llamacpp.Runtime(q4_0, n_ctx=64)
    llm = llamacpp.load(q4_0, n_ctx=64)
    llm.eval(ids)
    assert np.array_equal(rt.logits(ids), np.asarray(llm.scores[: len(ids)], dtype=np.float32))
    rt.close()


@pytest.mark.skipif(not AMX, reason="the CPU has no AMX: llama.cpp's AMX buffers do not crash here")
def test_real_amx_crash_is_one_line(cli, q4_0, tiny, monkeypatch):
    """On an AMX CPU, with extra buffer types turned back on, llama.cpp really crashes in llama_decode
    (SIGSEGV on one machine of our kind, SIGILL on another);
    verify --runtime llamacpp says so in one line."""
    monkeypatch.setenv(llamacpp.EXTRA_BUFTS_ENV, "1")
    r = cli("verify", q4_0, "--source", tiny, "--runtime", "llamacpp", "--tokens", "1024", "--ctx", "128", "--no-record")
    assert_one_line_error(r, "llama.cpp crashed (SIG", llamacpp.EXTRA_BUFTS_ENV)


def test_quantizer_crash_is_one_error(q4_0, tmp_path, monkeypatch):
    """The quantizer runs in a child process too: a child that dies of a real SIGSEGV is one error,
    and this process goes on."""
    real = llamacpp._child

    def segfaulting(*args):
        p = real(*args)
        os.kill(p.pid, signal.SIGSEGV)  # arrives while the child starts up, before it answers
        return p

    monkeypatch.setattr(llamacpp, "_child", segfaulting)
    with pytest.raises(QuantkitError, match=r"llama.cpp crashed \(SIGSEGV\) while quantizing .*\.gguf to Q8_0"):
        llamacpp.quantize(q4_0, tmp_path / "y.gguf", "Q8_0")
    assert not (tmp_path / "y.gguf").exists()


def test_child_errors_are_one_line_not_a_child_traceback(q4_0, tmp_path, capfd):
    """A Python exception inside a llama.cpp child comes back as one error line; the child prints nothing."""
    bad = tmp_path / "bad.gguf"  # a file llama.cpp cannot read
    bad.write_bytes(b"GGUF" + os.urandom(64))
    with pytest.raises(QuantkitError, match="quantizer failed on Q8_0: llama_model_quantize returned") as e:
        llamacpp.quantize(bad, tmp_path / "y.gguf", "Q8_0")
    assert "\n" not in str(e.value)
    with pytest.raises(QuantkitError, match="llama.cpp failed while loading bad.gguf: ValueError"):
        llamacpp.Runtime(bad, n_ctx=64)
    assert "Traceback" not in capfd.readouterr().err
