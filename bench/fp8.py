"""FP8-dynamic: quantkit against the `cp` floor and llm-compressor's model_free_ptq.

    python bench/fp8.py SOURCE_DIR [--work DIR] [--skip-mfp]

For each tool: wall time until its output is on disk (each command is followed
by `sync`, so a small output that fits in the page cache does not flatter cp),
and peak RSS of its largest process; page cache emptied before each run when
allowed (root). Output folders are deleted after each run.
Prints a markdown table and writes bench/out/fp8-<name>.json.
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
MFP = (
    "from llmcompressor import model_free_ptq; import sys; "
    "model_free_ptq(sys.argv[1], sys.argv[2], scheme='FP8_DYNAMIC', "
    "ignore=['lm_head', 're:.*embed_tokens'], device='cpu')"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", type=Path)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--skip-mfp", action="store_true")
    args = ap.parse_args()
    src = args.source.resolve()
    work = (args.work or src.parent).resolve()
    weights = sorted(src.glob("*.safetensors"))
    size = sum(p.stat().st_size for p in weights)
    quantkit = str(Path(sys.executable).with_name("quantkit"))
    jobs = [
        ("cp (floor)", lambda out: ["bash", "-c", f"mkdir -p {out} && cp {src}/*.safetensors {out}/"]),
        ("quantkit fp8", lambda out: [quantkit, "fp8", str(src), "-o", str(out), "--json"]),
    ]
    if not args.skip_mfp:
        jobs.append(("llm-compressor model_free_ptq", lambda out: [sys.executable, "-c", MFP, str(src), str(out)]))
    rows = []
    for label, make in jobs:
        out = work / "bench-fp8-out"
        shutil.rmtree(out, ignore_errors=True)
        r = run(["bash", "-c", shlex.join(make(out)) + " && sync"])
        r["label"] = label
        r["output_bytes"] = sum(p.stat().st_size for p in out.glob("*.safetensors"))
        rows.append(r)
        shutil.rmtree(out, ignore_errors=True)
        print(f"{label}: {r['wall_s']} s, {r['peak_rss_mib']} MiB", flush=True)
    floor = rows[0]["wall_s"]
    print(f"\nsource: {src.name}, {len(weights)} shard(s), {size / 2**30:.2f} GiB\n")
    print("| tool | wall (s) | x cp | peak RSS (MiB) | output (GiB) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['wall_s']} | {r['wall_s'] / floor:.2f} | {r['peak_rss_mib']} | {r['output_bytes'] / 2**30:.2f} |")
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / f"fp8-{src.name}.json").write_text(json.dumps({"source": str(src), "source_bytes": size, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
