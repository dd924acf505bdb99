"""INT4 benchmarks on SmolLM2-135M (builtin:smollm2, group size 64: 576 is no multiple of 128).

    python bench/int4.py quality  [--samples 128] [--seq-len 512] [--grid 20]
    python bench/int4.py overhead [--samples 32] [--seq-len 512] [--grid 10]

quality: four compressed-tensors artifacts, RTN symmetric, GPTQ, RTN
asymmetric, AWQ, then `quantkit verify` of all four against the source; prints
the table with each conversion's time and peak RSS; writes
bench/out/int4-quality.json.

overhead: quantkit gptq / awq against calling llm-compressor directly with the
same settings (the few lines a user would write: same calibration rows, same
modifiers, float32 on CPU as quantkit does, sequential pipeline,
save_pretrained compressed). Fresh processes:
wall time and peak RSS; writes bench/out/int4-overhead.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from measure import run

HERE = Path(__file__).resolve().parent
PY = sys.executable

RTN = """
import sys
from pathlib import Path
from quantkit.backends.int4 import RTN
from quantkit.source import resolve
src, out = resolve(sys.argv[1]), Path(sys.argv[2])
b = RTN(symmetric=sys.argv[3] == "sym")
out.mkdir(parents=True)
b.run(b.check(src), out, lambda n: None)
"""

DIRECT = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from quantkit.backends.int4 import AWQ, GPTQ
from quantkit.backends.int4.calibrate import awq_on_cpu, calibration_dataset, modifiers
from quantkit.fixtures import builtin
from quantkit.text import default_text
method, out, samples, seq_len, grid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
src = builtin("smollm2")
tok = AutoTokenizer.from_pretrained(src)
data = calibration_dataset(tok, default_text("calibration"), samples, seq_len)
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)  # as quantkit on CPU
b = GPTQ() if method == "gptq" else AWQ(grid=grid)
recipe = modifiers(b, 64)
ctx = awq_on_cpu() if method == "awq" else torch.no_grad()
with ctx:
    oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=len(data), max_seq_length=seq_len,
            pipeline="sequential", shuffle_calibration_samples=False)
model.save_pretrained(out, save_compressed=True)
"""


def quality(a) -> None:
    cal = ["--samples", str(a.samples), "--seq-len", str(a.seq_len)]
    jobs = {
        "rtn-sym": [PY, "-c", RTN, "builtin:smollm2", str(a.work / "rtn-sym"), "sym"],
        "gptq": [PY, "-m", "quantkit", "gptq", "builtin:smollm2", "-o", str(a.work / "gptq"), "--force", "--json", *cal],
        "rtn-asym": [PY, "-c", RTN, "builtin:smollm2", str(a.work / "rtn-asym"), "asym"],
        "awq": [PY, "-m", "quantkit", "awq", "builtin:smollm2", "-o", str(a.work / "awq"), "--force", "--json", *cal,
                "--grid", str(a.grid)],
    }
    runs = {}
    for name, cmd in jobs.items():
        if name.startswith("rtn"):
            shutil.rmtree(a.work / name, ignore_errors=True)
        runs[name] = run(cmd, cold=False)
        print(f"{name}: {runs[name]['wall_s']} s, {runs[name]['peak_rss_mib']} MiB", file=sys.stderr, flush=True)
    out = subprocess.run([PY, "-m", "quantkit", "verify", *(str(a.work / n) for n in jobs), "--source", "builtin:smollm2",
                          "--tokens", str(a.tokens), "--no-record", "--json", "--chart", str(a.work / "int4.png")], capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "int4-quality.json").write_text(json.dumps({"args": vars(a) | {"work": str(a.work)}, "runs": runs,
                                                                "verify": figures}, indent=2))
    print("| artifact | PPL | ratio | KLD mean | KLD p99 | top-1 | convert s | peak RSS MiB |\n|---|---|---|---|---|---|---|---|")
    for name, f in zip(jobs, figures):
        print(f"| {name} | {f['ppl_quant']:.3f} | {f['ppl_ratio']:.4f} | {f['kld_mean']:.4f} | {f['kld_p99']:.3f} | "
              f"{100 * f['top1_agreement']:.2f}% | {runs[name]['wall_s']} | {runs[name]['peak_rss_mib']} |")
    print(f"source PPL {figures[0]['ppl_source']:.3f}, {figures[0]['tokens_scored']} tokens scored")


def overhead(a) -> None:
    rows = []
    for method in a.methods.split(","):
        extra = ["--grid", str(a.grid)] if method == "awq" else []
        for tool, cmd in (
            ("llm-compressor direct", [PY, "-c", DIRECT, method, str(a.work / f"{method}-direct"), str(a.samples), str(a.seq_len), str(a.grid)]),
            ("quantkit", [PY, "-m", "quantkit", method, "builtin:smollm2", "-o", str(a.work / f"{method}-quantkit"), "--force",
                          "--json", "--samples", str(a.samples), "--seq-len", str(a.seq_len), *extra]),
        ):
            shutil.rmtree(a.work / f"{method}-direct", ignore_errors=True)
            r = run(cmd, cold=False)
            r.update(method=method, tool=tool)
            rows.append(r)
            print(f"{method} {tool}: {r['wall_s']} s, {r['peak_rss_mib']} MiB", file=sys.stderr, flush=True)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "int4-overhead.json").write_text(json.dumps({"args": {**vars(a), "work": str(a.work)}, "runs": rows}, indent=2))
    print("| method | tool | wall s | peak RSS MiB |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['tool']} | {r['wall_s']} | {r['peak_rss_mib']} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["quality", "overhead"])
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--grid", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--methods", default="gptq,awq", help="overhead: which methods")
    a = ap.parse_args()
    quick = a.what == "overhead"
    a.samples = a.samples or (32 if quick else 128)
    a.grid = a.grid or (10 if quick else 20)
    a.work = a.work or Path(f"/tmp/quantkit-bench-int4-{a.what}")
    a.work.mkdir(parents=True, exist_ok=True)
    (HERE / "out").mkdir(exist_ok=True)
    (quality if a.what == "quality" else overhead)(a)


if __name__ == "__main__":
    main()
