"""What turning llama.cpp's extra buffer types off costs: prompt processing speed per GGUF type.

    python bench/llamacpp_bufts.py [MODEL] [--types F16,Q8_0,Q4_0,Q4_K_M] [--threads 2]

Converts MODEL (default builtin:smollm2) to each type with quantkit, then, in a fresh process
per (type, setting), loads the file through quantkit's llama.cpp loader with extra buffer types
off (quantkit's default) and on (QUANTKIT_LLAMACPP_EXTRA_BUFTS=1), evaluates one 512-token
window three times and reports the best tokens per second. A run that crashes is reported with
its signal (on CPUs with AMX, the "on" runs of quantized types crash in llama_decode).
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import sys, time
from quantkit.backends.gguf import llamacpp
llm = llamacpp.load(sys.argv[1], n_ctx=512, n_batch=512, logits_all=False, verbose=True, n_threads=int(sys.argv[2]), n_threads_batch=int(sys.argv[2]))
ids = [(7 * i + 3) % llm.n_vocab() for i in range(512)]
best = 0.0
for _ in range(3):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    best = max(best, 512 / (time.perf_counter() - t0))
print(f"TOKENS_PER_S {best:.1f}")
"""


def run(path: Path, extra: bool, threads: int) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "QUANTKIT_LLAMACPP_EXTRA_BUFTS"}
    env["LLAMA_LOG"] = "1"
    if extra:
        env["QUANTKIT_LLAMACPP_EXTRA_BUFTS"] = "1"
    r = subprocess.run([sys.executable, "-c", CHILD, str(path), str(threads)], capture_output=True, text=True, env=env)
    buffers = ",".join(sorted(set(re.findall(r"(\S+) model buffer size", r.stderr)))) or "?"
    if r.returncode < 0:
        return f"crashed ({signal.Signals(-r.returncode).name})", buffers
    m = re.search(r"TOKENS_PER_S (\S+)", r.stdout)
    return (m.group(1) + " tok/s") if m else f"failed (exit {r.returncode})", buffers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="builtin:smollm2")
    ap.add_argument("--types", default="F16,Q8_0,Q4_0,Q4_K_M")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    cpu = sorted(set(re.findall(r"\b(amx\w*|avx512_bf16|avx2)\b", Path("/proc/cpuinfo").read_text())))
    print(f"CPU flags: {' '.join(cpu)}; threads {a.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "g"
        subprocess.run([sys.executable, "-m", "quantkit", "gguf", a.model, "--type", a.types, "-o", str(out), "--json"],
                       check=True, capture_output=True)
        print("| type | extra buffer types off (default) | buffers | on | buffers |")
        print("|---|---|---|---|---|")
        for t in a.types.split(","):
            f = next(out.glob(f"*-{t}.gguf"))
            off, b_off = run(f, False, a.threads)
            on, b_on = run(f, True, a.threads)
            print(f"| {t} | {off} | {b_off} | {on} | {b_on} |")


if __name__ == "__main__":
    main()
