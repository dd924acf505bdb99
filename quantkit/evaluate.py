"""A simple perplexity evaluator (the `verify` command of issue 3 builds the full report).

Windows are scored the way llama.cpp's perplexity tool scores them: the text is
tokenized once with BOS, cut into chunks of `ctx` tokens, the first token of each
chunk is set to BOS, and only the second half of each chunk is scored.
Models are loaded with transformers on CPU; a compressed-tensors FP8 artifact is
decompressed by transformers to dense weights (FP8 values times their scales),
so this measures the weight quantization; activations run in the compute dtype.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from quantkit import output
from quantkit.errors import InputError
from quantkit.libs import quiet_transformers
from quantkit.text import load_text


def tokenize(tokenizer, text: str, max_tokens: int) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + ids[: max_tokens]


def windows(ids: list[int], ctx: int, bos: int | None) -> list[list[int]]:
    chunks = [ids[i : i + ctx] for i in range(0, len(ids) - ctx + 1, ctx)]
    if bos is not None:
        chunks = [[bos] + c[1:] for c in chunks]
    return chunks


def load_model(path: Path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.eval()


@torch.inference_mode()
def perplexity(model, chunks: list[list[int]], progress=None) -> dict:
    nll_sum = nll_sq = 0.0
    count = 0
    for c in chunks:
        x = torch.tensor([c])
        logits = model(x).logits[0].float()
        first = len(c) // 2
        logp = torch.log_softmax(logits[first:-1], dim=-1)
        target = x[0, first + 1 :]
        nll = -logp.gather(1, target[:, None])[:, 0].double()
        nll_sum += nll.sum().item()
        nll_sq += (nll * nll).sum().item()
        count += nll.numel()
        if progress:
            progress(1)
    mean = nll_sum / count
    ppl = math.exp(mean)
    var = max(nll_sq / count - mean * mean, 0.0)
    return {"ppl": ppl, "ppl_err": ppl * math.sqrt(var / max(count - 1, 1)), "tokens_scored": count}


def compare_perplexity(folder: Path, eval_text: str | None, max_tokens: int, ctx: int = 512, show_progress: bool = True) -> dict:
    """PPL of the artifact's source and of the artifact on the same windows; recorded in quantkit.json."""
    from transformers import AutoTokenizer

    from quantkit.progress import ByteProgress

    manifest = output.read_manifest(folder)
    if manifest is None:
        raise InputError(f"{folder} has no quantkit.json; evaluate an artifact quantkit wrote")
    source = Path(manifest["source"]["path"])
    text, described = load_text(eval_text, "evaluation")
    tok = AutoTokenizer.from_pretrained(folder)
    chunks = windows(tokenize(tok, text, max_tokens), ctx, tok.bos_token_id)
    if not chunks:
        raise InputError(f"the evaluation text has fewer than {ctx} tokens; pass a longer --eval-text")
    results = {}
    with ByteProgress("perplexity", 2 * len(chunks), enabled=show_progress) as bar:
        for key, path in (("source", source), ("quant", folder)):
            results[key] = perplexity(load_model(path), chunks, bar.advance)
    ev = {
        "method": f"llama.cpp-style windows: ctx {ctx}, second half of each window scored; transformers on CPU, float32 compute",
        "text": described,
        "ppl_source": results["source"]["ppl"],
        "ppl_source_err": results["source"]["ppl_err"],
        "ppl_quant": results["quant"]["ppl"],
        "ppl_quant_err": results["quant"]["ppl_err"],
        "ppl_ratio": results["quant"]["ppl"] / results["source"]["ppl"],
        "tokens_scored": results["quant"]["tokens_scored"],
    }
    manifest["evaluation"] = ev
    output.write_json(folder / output.MANIFEST, manifest)
    return manifest
