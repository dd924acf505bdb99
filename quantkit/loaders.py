"""Whole-model scorers: any artifact quantkit reads -> a model that gives logits, loaded at once.

verify streams every transformers-run model one decoder layer at a time (quantkit/streaming);
what remains here is (1) llama.cpp's own runtime for GGUF (`--runtime llamacpp`: a child process
that maps the file itself), (2) the checks every artifact gets before anything loads, and (3) the
in-memory transformers loaders verify used before streaming, kept as the independent reference the
streamed figures are tested against (tests/test_streaming.py). EXL2 (exllamav2 is CUDA-only) is
dequantized on CPU exactly as exllamav2's reconstruct kernel does and run in transformers; the
legacy INT4 layouts (AutoGPTQ, AutoAWQ GEMM) are read back by quantkit/backends/int4/layouts.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from quantkit import formats
from quantkit.errors import InputError
from quantkit.libs import no_library_bars, quiet_gguf, quiet_transformers


@dataclass
class Scorer:
    path: Path
    format: str
    size_bytes: int  # bytes of the weight files
    activations: str  # how activations are treated at run time
    vocab_size: int
    logits: Callable[[list[int]], torch.Tensor]  # token ids -> [len, vocab] float32
    runtime: str = "transformers on CPU, float32 compute"


def _weights_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _hf_logits(model) -> Callable[[list[int]], torch.Tensor]:
    @torch.inference_mode()
    def run(ids: list[int]) -> torch.Tensor:
        return model(torch.tensor([ids])).logits[0].float()

    return run


def _load_transformers(path: Path, **kw):
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    with no_library_bars(), torch.inference_mode():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw).eval()
        model(torch.tensor([[0]]))  # compressed-tensors decompresses on the first forward
    return model


def load_hf(path: Path) -> Scorer:
    """Plain or compressed-tensors checkpoints: transformers loads both on CPU."""
    config = json.loads((path / "config.json").read_text())
    fmt = formats.config_format(config) or "Hugging Face checkpoint"
    qc = config.get("quantization_config") or {}
    acts = "unquantized (float32 compute)"
    for group in (qc.get("config_groups") or {}).values():
        ia = group.get("input_activations")
        if ia and ia.get("dynamic"):
            acts = (f"{ia.get('type')}{ia.get('num_bits')} per-{ia.get('strategy')} dynamic on Linear inputs, "
                    "applied by compressed-tensors inside transformers' forward, as vLLM does")
    model = _load_transformers(path)
    return Scorer(path, fmt, _weights_size(path), acts, model.config.vocab_size, _hf_logits(model))


def load_gguf(path: Path) -> Scorer:
    """GGUF through transformers' GGUF loader (dequantized to float32: weight error only)."""
    f = _one_gguf(path)
    with quiet_gguf():  # transformers reads the file with gguf-py
        model = _load_transformers(f.parent, gguf_file=f.name)
    return Scorer(f, "gguf", f.stat().st_size, "unquantized (float32 compute, weights dequantized)",
                  model.config.vocab_size, _hf_logits(model))


def load_gguf_llamacpp(path: Path) -> Scorer:
    """GGUF in llama.cpp's own runtime (llama-cpp-python, CPU): its kernels, its activation handling."""
    from quantkit.backends.gguf import llamacpp

    f = _one_gguf(path)
    llm = llamacpp.Runtime(f, n_ctx=4096)  # a child process: a crash in llama.cpp is one line

    def run(ids: list[int]) -> torch.Tensor:
        if len(ids) > llm.n_ctx:
            raise InputError(f"--ctx {len(ids)} is longer than quantkit's llama.cpp context ({llm.n_ctx}); use a shorter --ctx")
        return torch.from_numpy(llm.logits(ids).copy())

    return Scorer(f, "gguf (llama.cpp)", f.stat().st_size, "llama.cpp CPU kernels (activations quantized as llama.cpp does)",
                  llm.n_vocab, run, runtime="llama.cpp (llama-cpp-python) on CPU")


def load_exl2(path: Path) -> Scorer:
    """EXL2 folder: weights dequantized on CPU as exllamav2's reconstruct kernel does
    (quantkit/backends/exl2), loaded into the transformers model its config.json describes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from quantkit.backends.exl2 import decode

    quiet_transformers()
    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    # exllamav2 reads the quantized lm_head before falling back to the embeddings: keep the head
    # the file carries even when the config ties it to the embeddings.
    names = decode.tensor_files(path)
    if getattr(config, "tie_word_embeddings", False) and any(n.startswith("lm_head.") for n in names):
        config.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    outs = {k: m.out_features for k, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    state = {k: v.float() for k, v in decode.read_exl2(path, outs)}
    _load_dense(path, model, state)
    return Scorer(path, "exl2", _weights_size(path),
                  "unquantized (float32 compute, weights dequantized as exllamav2's reconstruct does)",
                  model.config.vocab_size, _hf_logits(model))


def _load_dense(path: Path, model, state: dict[str, torch.Tensor]) -> None:
    """Load dequantized float32 weights into a model built from config.json: every tensor
    must match (strict), a mismatch is one line."""
    for tied, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        if tied not in state and source in state:  # a tied head the file does not carry
            state[tied] = state[source]
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise InputError(f"{path}: its tensors do not match the model config.json describes "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{path}: tensor shapes do not match config.json ({' '.join(str(e).split())[:300]})") from e


def _quantization_config(path: Path) -> dict:
    try:
        qc = json.loads((path / "config.json").read_text()).get("quantization_config")
    except (ValueError, OSError, AttributeError):
        return {}
    return qc if isinstance(qc, dict) else {}


def load_int4_legacy(path: Path) -> Scorer:
    """INT4 in the AutoGPTQ or AutoAWQ GEMM layout: each quantized Linear read back by
    quantkit/backends/int4/layouts.py and dequantized to float32, loaded into the transformers model
    config.json describes (its quantization_config dropped)."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from quantkit.backends.int4 import layouts

    qc = _quantization_config(path)
    reader = layouts.LEGACY_READERS[qc.get("quant_method")]
    reader.check(qc)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise InputError(f"{path} holds no .safetensors files; pass a folder quantkit gptq/awq wrote")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                if name in tensors:
                    raise InputError(f"{name} is stored twice in {path}; the folder is damaged")
                tensors[name] = st.get_tensor(name)
    suffixes = tuple("." + s for s in reader.suffixes)
    prefixes = sorted({k[: k.rindex(".") + 1] for k in tensors if k.endswith(suffixes)})
    if not prefixes:
        raise InputError(f"{path}: config.json declares {reader.describe} but no tensor is quantized "
                         f"(no {', '.join(reader.suffixes)}); the folder is damaged")
    state = {}
    for prefix in prefixes:
        state[prefix + "weight"] = layouts.dequantize(reader.read(tensors, prefix, qc))
        for s in reader.suffixes:
            tensors.pop(prefix + s, None)
    for k, v in tensors.items():
        if k in state:
            raise InputError(f"{k} is stored both quantized and unquantized in {path}; the folder is damaged")
        state[k] = v.float() if v.is_floating_point() else v

    quiet_transformers()
    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    _load_dense(path, model, state)
    return Scorer(path, reader.describe, _weights_size(path),
                  f"unquantized (float32 compute, weights dequantized from the {reader.library} layout)",
                  model.config.vocab_size, _hf_logits(model))


def _one_gguf(path: Path) -> Path:
    files = [path] if path.is_file() else sorted(path.glob("*.gguf"))
    if len(files) != 1:
        raise InputError(f"{path} holds {len(files)} .gguf files; pass the one to verify")
    return files[0]


def _is_gguf(path: Path) -> bool:
    return (path.is_file() and path.suffix == ".gguf") or (
        path.is_dir() and not (path / "config.json").exists() and any(path.glob("*.gguf")))


def _is_exl2(path: Path) -> bool:
    from quantkit.backends.exl2.decode import is_exl2

    return is_exl2(path)


def _is_int4_legacy(path: Path) -> bool:
    """config.json declares AutoGPTQ's or AutoAWQ's quant_method (not a compressed-tensors format)."""
    from quantkit.backends.int4 import layouts

    if not (path.is_dir() and (path / "config.json").is_file()):
        return False
    qc = _quantization_config(path)
    ct_formats = {fmt for method, fmt in formats.CONFIG_FORMATS if method == "compressed-tensors"}
    return qc.get("quant_method") in layouts.LEGACY_READERS and qc.get("format") not in ct_formats


def _is_hf(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


# (detect, load) in order: the first that detects the path loads it.
LOADERS: list[tuple[Callable[[Path], bool], Callable[[Path], Scorer]]] = [
    (_is_gguf, load_gguf),
    (_is_exl2, load_exl2),
    (_is_int4_legacy, load_int4_legacy),
    (_is_hf, load_hf),
]


# Runtimes a GGUF can be scored in: transformers (dequantized, float32) or llama.cpp itself.
GGUF_RUNTIMES = {"transformers": load_gguf, "llamacpp": load_gguf_llamacpp}


def check_gguf(path: Path) -> None:
    """A .gguf file that gguf-py reads whole: its magic, header and every tensor within the file."""
    import gguf

    try:
        with quiet_gguf():
            reader = gguf.GGUFReader(str(path))
        size = path.stat().st_size
        for t in reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise ValueError(f"tensor {t.name} ends past the end of the file")
    except (ValueError, KeyError, IndexError, OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not a complete GGUF file ({' '.join(str(e).split())[:120]}); "
                         "re-download or re-convert it") from None


def check(path: Path, allow_pickle: bool = False) -> None:
    """Before any model is loaded: the checks a conversion source gets (quantkit/source.py), for
    artifacts of any format."""
    from quantkit.source import check_artifact

    if not path.exists():
        raise InputError(f"{path}: no such artifact; pass a folder quantkit wrote or a .gguf file")
    if _is_gguf(path):
        for f in ([path] if path.is_file() else sorted(path.glob("*.gguf"))):
            check_gguf(f)
    elif path.is_dir():
        check_artifact(path, allow_pickle)
    else:
        raise InputError(f"{path} is neither a checkpoint folder (config.json) nor a .gguf file; pass an artifact quantkit reads")


def load(path: Path, gguf_runtime: str = "transformers", allow_pickle: bool = False) -> Scorer:
    path = Path(path)
    if gguf_runtime not in GGUF_RUNTIMES:
        raise InputError(f"--runtime {gguf_runtime}: choose {' or '.join(GGUF_RUNTIMES)}")
    check(path, allow_pickle)
    if gguf_runtime != "transformers" and _is_gguf(path):
        return GGUF_RUNTIMES[gguf_runtime](path)
    for detect, loader in LOADERS:
        if detect(path):
            return loader(path)
    raise InputError(f"{path} is neither a checkpoint folder (config.json) nor a .gguf file; pass an artifact quantkit reads")
