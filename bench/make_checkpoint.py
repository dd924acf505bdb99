"""Write a random BF16 checkpoint with Llama-3.1-8B's shapes (about 15 GiB, 4 shards), shard by shard.

    python bench/make_checkpoint.py OUT_DIR [--layers 32] [--tokenizer-from DIR]

Values are N(0, 0.02) in BF16: the right shapes and bytes for timing and memory,
no meaning. Tensors are generated and written one at a time, so this needs
little memory. Never used by tests.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import torch

from quantkit.arch import tensors
from quantkit.stio import PlannedTensor, StreamWriter

LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 128000,
    "eos_token_id": 128009,
    "hidden_act": "silu",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--tokenizer-from", type=Path, default=None,
                    help="copy this model's tokenizer files (GGUF conversion needs a vocabulary; it is padded to 128256)")
    args = ap.parse_args()
    cfg = dict(LLAMA_31_8B, num_hidden_layers=args.layers)
    todo = [(t.name, t.shape) for t in tensors(cfg)]
    total = sum(math.prod(s) * 2 for _, s in todo)
    per_shard = total / args.shards
    shards, cur, size = [], [], 0
    for name, shape in todo:
        cur.append((name, shape))
        size += math.prod(shape) * 2
        if size >= per_shard * (len(shards) + 1) and len(shards) < args.shards - 1:
            shards.append(cur)
            cur = []
    shards.append(cur)
    args.out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    weight_map = {}
    for k, group in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        w = StreamWriter(args.out / fname, [PlannedTensor(n, "BF16", s) for n, s in group], {"format": "pt"})
        for name, shape in group:
            if len(shape) == 1:
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                t = torch.empty(shape, dtype=torch.bfloat16)
                for r in range(0, shape[0], 1024):  # bounded float32 scratch
                    t[r : r + 1024] = torch.randn((min(1024, shape[0] - r), shape[1]), generator=gen).mul_(0.02)
            w.write(name, t)
            weight_map[name] = fname
        w.close()
        print(f"wrote {fname}", flush=True)
    (args.out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (args.out / "config.json").write_text(json.dumps(cfg, indent=2))
    if args.tokenizer_from:
        from quantkit.source import CARRIED_FILES

        for name in CARRIED_FILES:
            if (args.tokenizer_from / name).is_file() and name != "generation_config.json":
                shutil.copyfile(args.tokenizer_from / name, args.out / name)


if __name__ == "__main__":
    main()
