"""Every artifact of the tiny model, hashed: the before-and-after check for refactors (issue 15).

    python bench/identical.py --write bench/identical-tiny.json    # record (before a refactor)
    python bench/identical.py --check bench/identical-tiny.json    # compare (after it)

Writes, from builtin:tiny-llama, one artifact of each backend and layout (fp8; gptq and awq in
compressed-tensors, AutoGPTQ and AutoAWQ layouts; gguf with every type quantkit encodes, with and
without an imatrix; exl2 at two bit rates) and one `quantkit run` of a recipe with fp8, gptq, gguf
and exl2, and records the sha256 of every weight file (*.safetensors, *.gguf) and of config.json.
torch runs with one thread (OMP_NUM_THREADS=1), because the thread count changes GPTQ's rounding.
--check exits 1 and names every file whose bytes differ.

Float32 results may differ between CPUs (AMX, AVX-512, AVX2 kernels), so compare on the machine
that wrote the record. bench/identical-tiny.json was written on the dev machine (Xeon with AMX,
torch 2.13.0 CPU) at the end of issue 14, and the code of the start of that session (c0feaf2)
gave the same 44 files byte for byte.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quantkit.output import sha256_file

SRC = "builtin:tiny-llama"
CAL = ["--samples", "8", "--seq-len", "64"]
GGUF_TYPES = "F16,BF16,Q8_0,Q4_0,Q4_1,Q5_0,Q5_1,Q2_K,Q3_K_S,Q3_K_M,Q3_K_L,Q4_K_S,Q4_K_M,Q5_K_S,Q5_K_M,Q6_K"
EXL2 = ["--rows", "4", "--length", "128", "--measurement-rows", "2", "--measurement-length", "128"]
COMMANDS = {
    "fp8": ["fp8", SRC],
    "gptq-ct": ["gptq", SRC, *CAL],
    "gptq-autogptq": ["gptq", SRC, *CAL, "--format", "gptq"],
    "gptq-no-act-order": ["gptq", SRC, *CAL, "--act-order", "none"],
    "awq-ct": ["awq", SRC, *CAL, "--grid", "4"],
    "awq-autoawq": ["awq", SRC, *CAL, "--grid", "4", "--format", "awq"],
    "gguf": ["gguf", SRC, "--type", GGUF_TYPES],
    "gguf-imatrix": ["gguf", SRC, "--type", "Q4_K_M,Q3_K_S,Q2_K", "--imatrix", "--imatrix-chunks", "4"],
    "exl2-4.0": ["exl2", SRC, "--bpw", "4.0", "--head-bits", "6", *EXL2],
    "exl2-6.0": ["exl2", SRC, "--bpw", "6.0", "--head-bits", "8", *EXL2],
}
RECIPE = f"""recipe: 1
name: tiny-release
source: {SRC}
verify: {{tokens: 2048, ctx: 128}}
artifacts:
  - format: fp8
    verify: false
  - format: gptq
    options: {{samples: 8, seq_len: 64}}
    verify: false
  - format: gguf
    options: {{type: [Q8_0, Q4_K_M]}}
    verify: false
  - format: exl2
    options: {{bpw: 5.0, head_bits: 6, rows: 4, length: 128, measurement_rows: 2, measurement_length: 128}}
    verify: false
"""


def hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and (p.suffix in (".safetensors", ".gguf") or p.name == "config.json")}


def quantkit(*args: str, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "quantkit", *args, "--json"], cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"quantkit {' '.join(args)} failed:\n{r.stderr[-3000:]}")


def build() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, args in COMMANDS.items():
            t0 = time.perf_counter()
            quantkit(*args, "-o", str(tmp / name), cwd=tmp)
            out[name] = hashes(tmp / name)
            print(f"{name}: {len(out[name])} files, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        (tmp / "recipe.yaml").write_text(RECIPE)
        quantkit("run", str(tmp / "recipe.yaml"), "-o", str(tmp / "release"), cwd=tmp)
        for folder in sorted(p for p in (tmp / "release").iterdir() if p.is_dir()):
            out[f"recipe/{folder.name}"] = hashes(folder)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", type=Path)
    g.add_argument("--check", type=Path)
    a = ap.parse_args()
    got = build()
    if a.write:
        a.write.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        print(f"wrote {a.write}: {sum(len(v) for v in got.values())} files in {len(got)} artifacts")
        return
    want = json.loads(a.check.read_text())
    bad = [f"{art}/{f}" for art in sorted(set(want) | set(got))
           for f in sorted(set(want.get(art, {})) | set(got.get(art, {})))
           if want.get(art, {}).get(f) != got.get(art, {}).get(f)]
    total = sum(len(v) for v in want.values())
    if bad:
        print(f"{len(bad)} of {total} files differ:\n  " + "\n  ".join(bad))
        sys.exit(1)
    print(f"all {total} files in {len(want)} artifacts are byte-identical")


if __name__ == "__main__":
    main()
