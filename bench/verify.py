"""verify throughput on SmolLM2-135M: quantkit verify against the plain loops that do the same forwards.

    python bench/verify.py [--tokens 4096] [--work DIR]

Runs, each as its own process (load time included), on the same windows
(ctx 512, llama.cpp's layout):
  1. quantkit verify FP8 artifact vs source (2 models, all figures);
  2. a plain transformers forward loop over the same windows for the same 2
     models, keeping nothing: the floor for that work;
  3. quantkit verify of the llama.cpp-written Q4_1 GGUF vs source (2 models);
  4. llama.cpp (llama-cpp-python) evaluating the GGUF alone (1 model), as its
     perplexity tool would.
Reports wall time, peak RSS and forward tokens per second (windows x ctx x
models / wall). Prints a markdown table and writes bench/out/verify.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from measure import run

HERE = Path(__file__).resolve().parent
PY = sys.executable
CTX = 512

WINDOWS = """
import sys
from transformers import AutoTokenizer
from quantkit.fixtures import builtin
from quantkit.text import default_text
from quantkit.scoring import tokenize, windows
tok = AutoTokenizer.from_pretrained(builtin("smollm2"))
chunks = windows(tokenize(tok, default_text("evaluation"), int(sys.argv[1])), 512, tok.bos_token_id)
"""

TRANSFORMERS_LOOP = WINDOWS + """
import torch
from transformers import AutoModelForCausalLM
models = [AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for p in sys.argv[2:]]
with torch.inference_mode():
    for c in chunks:
        for m in models:
            m(torch.tensor([c])).logits
"""

LLAMA_CPP_LOOP = WINDOWS + """
import numpy as np
from quantkit.backends.gguf import llamacpp
llm = llamacpp.load(sys.argv[2], n_ctx=512, n_batch=512, logits_all=True)
for c in chunks:
    llm.reset()
    llm.eval(c)
    np.asarray(llm.scores[:512])
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--work", type=Path, default=Path("/tmp/quantkit-bench-verify"))
    a = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from quantkit.fixtures import builtin, smollm2_gguf

    src, gguf = builtin("smollm2"), smollm2_gguf()
    a.work.mkdir(parents=True, exist_ok=True)
    fp8 = a.work / "fp8"
    run([PY, "-m", "quantkit", "fp8", str(src), "-o", str(fp8), "--force"], cold=False)
    n_windows = a.tokens // CTX
    verify = [PY, "-m", "quantkit", "verify", "--source", str(src), "--tokens", str(a.tokens), "--json", "--no-record"]
    rows = [
        ("quantkit verify, FP8 vs source", 2, verify[:4] + [str(fp8)] + verify[4:]),
        ("plain transformers forward loop, same 2 models", 2, [PY, "-c", TRANSFORMERS_LOOP, str(a.tokens), str(src), str(fp8)]),
        ("quantkit verify, GGUF Q4_1 vs source", 2, verify[:4] + [str(gguf)] + verify[4:]),
        ("llama.cpp evaluating the GGUF alone", 1, [PY, "-c", LLAMA_CPP_LOOP, str(a.tokens), str(gguf)]),
    ]
    results = []
    for name, models, cmd in rows:
        r = run(cmd, cold=False)
        r.update(name=name, models=models, windows=n_windows,
                 forward_tokens_per_s=round(n_windows * CTX * models / r["wall_s"], 1))
        results.append(r)
        print(f"{name}: {r['wall_s']} s, {r['peak_rss_mib']} MiB", file=sys.stderr)
    out = HERE / "out" / "verify.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "tokens": a.tokens, "runs": results}, indent=2))
    print(f"| run ({n_windows} windows of {CTX}) | models | wall s | forward tokens/s | peak RSS MiB |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['models']} | {r['wall_s']} | {r['forward_tokens_per_s']} | {r['peak_rss_mib']} |")


if __name__ == "__main__":
    main()
