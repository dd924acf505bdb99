"""GGUF: quantkit's converter+encoders against llama.cpp's quantizer (llama-cpp-python), same input.

    python bench/gguf.py SOURCE_DIR [--types F16,Q8_0,Q4_K_M] [--work DIR] [--one-pass]

For each type: `quantkit gguf SOURCE --type T` (safetensors in, GGUF out: conversion
and encoding), and llama.cpp's `llama_model_quantize` from a BF16 GGUF of the same
source (written by quantkit beforehand, not timed: llama.cpp's own HF converter is
a script in its repository, not part of llama-cpp-python). Wall time until the
output is on disk (sync) and peak RSS of the process, page cache emptied first when
allowed. `--one-pass` also times all types in one quantkit run.
Needs quantkit[llamacpp]. Prints a markdown table; writes bench/out/gguf-<name>.json.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

from measure import run

HERE = Path(__file__).resolve().parent
# llama.cpp's quantizer alone: llama_cpp and gguf imported, not quantkit (whose imports include torch)
LLAMACPP = (
    "import ctypes, os, sys, gguf, llama_cpp; p = llama_cpp.llama_model_quantize_default_params(); "
    "p.ftype = int(gguf.LlamaFileType['MOSTLY_' + sys.argv[3]]); p.nthread = os.cpu_count(); "
    "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", type=Path)
    ap.add_argument("--types", default="F16,Q8_0,Q4_K_M")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--one-pass", action="store_true")
    args = ap.parse_args()
    src = args.source.resolve()
    work = (args.work or src.parent).resolve()
    types = args.types.split(",")
    quantkit = str(Path(sys.executable).with_name("quantkit"))
    size = sum(p.stat().st_size for p in src.glob("*.safetensors"))

    bf16_dir = work / "bench-gguf-bf16"
    shutil.rmtree(bf16_dir, ignore_errors=True)
    prep = run([quantkit, "gguf", str(src), "--type", "BF16", "-o", str(bf16_dir), "--json"], cold=False)
    bf16 = next(bf16_dir.glob("*.gguf"))
    print(f"BF16 GGUF input for llama.cpp written by quantkit: {prep['wall_s']} s, {prep['peak_rss_mib']} MiB", flush=True)

    rows = []
    jobs = []
    for t in types:
        jobs.append((f"quantkit gguf {t}", t, lambda out, t=t: [quantkit, "gguf", str(src), "--type", t, "-o", str(out), "--json"]))
        jobs.append((f"llama.cpp quantize {t} (from BF16 GGUF)", t,
                     lambda out, t=t: ["bash", "-c", f"mkdir -p {out} && " + shlex.join(
                         [sys.executable, "-c", LLAMACPP, str(bf16), str(out / f"x-{t}.gguf"), t])]))
    if args.one_pass:
        jobs.append((f"quantkit gguf {','.join(types)} (one pass)", ",".join(types),
                     lambda out: [quantkit, "gguf", str(src), "--type", ",".join(types), "-o", str(out), "--json"]))
    for label, t, make in jobs:
        out = work / "bench-gguf-out"
        shutil.rmtree(out, ignore_errors=True)
        r = run(["bash", "-c", shlex.join(make(out)) + " && sync"])
        r.update(label=label, type=t, output_bytes=sum(p.stat().st_size for p in out.glob("*.gguf")))
        rows.append(r)
        shutil.rmtree(out, ignore_errors=True)
        print(f"{label}: {r['wall_s']} s, {r['peak_rss_mib']} MiB", flush=True)
    shutil.rmtree(bf16_dir, ignore_errors=True)
    print(f"\nsource: {src.name}, {size / 2**30:.2f} GiB of safetensors\n")
    print("| run | wall (s) | peak RSS (MiB) | output (MiB) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['wall_s']} | {r['peak_rss_mib']} | {r['output_bytes'] / 2**20:.1f} |")
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / f"gguf-{src.name}.json").write_text(
        json.dumps({"source": str(src), "source_bytes": size, "bf16_prep": prep, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
