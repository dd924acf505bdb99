"""Memory and time of the commands that run one decoder layer at a time, on random checkpoints of real widths.

    python bench/stream.py [--shape 8b-4,8b-8,70b-4] [--commands verify,imatrix,exl2,gptq]
                           [--tokens 1024] [--work /tmp/streambench] [--keep]

Shapes: 8b-N is Llama-3.1-8B (hidden 4096, intermediate 14336, 32/8 heads, vocab
128256) with N decoder layers; 70b-N is Llama-3.1-70B's widths (hidden 8192,
intermediate 28672, 64/8 heads) with N layers. Each checkpoint is random BF16
(bench/make_checkpoint.py) with SmolLM2's tokenizer, written under --work and
deleted afterwards unless --keep. Each command runs as its own process
(OMP_NUM_THREADS=2, page cache kept), wall time and peak RSS from wait4:
  verify   `quantkit fp8` (not a target, timed for the record), then
           `quantkit verify FP8 --source MODEL --tokens T --ctx 512 --no-record --json`;
  imatrix  quantkit.backends.gguf.imatrix.compute over 1 chunk of 512 tokens (the
           streamed part of `quantkit gguf --imatrix`, without the conversion);
  exl2     `quantkit exl2` with one 256-token row to measure and one to quantize;
  gptq     `quantkit gptq --samples 2 --seq-len 256` (calibrating from disk, int4/calibrate.py);
  awq      `quantkit awq --samples 2 --seq-len 256 --grid 3`.
8b-1 with exl2 is one EXL2 measurement layer (and its quantization, the head and the files).
Per-layer seconds come from two depths of one width ((t_8 - t_4) / 4). The goal
is at most 6 GiB peak on 8B widths and 12 GiB on 70B widths, whatever the depth.
Prints a markdown table; writes bench/out/stream.json after every run, so a cut
run leaves what it measured. Times on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

from measure import run

HERE = Path(__file__).resolve().parent
PY = sys.executable
QUANTKIT = str(Path(PY).with_name("quantkit"))
ENV = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
OUT = HERE / "out" / "stream.json"

WIDTHS = {
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8},
    "70b": {"hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64, "num_key_value_heads": 8},
}
GOAL_GIB = {"8b": 6, "70b": 12}

# make_checkpoint.py writes Llama-3.1-8B's config; its module-level dict is widened here, the file is untouched
MAKE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import make_checkpoint
make_checkpoint.LLAMA_31_8B.update(json.loads(sys.argv[2]))
sys.argv = ["make_checkpoint.py"] + sys.argv[3:]
make_checkpoint.main()
"""

IMATRIX = """
import sys
from pathlib import Path
from quantkit.backends.gguf import imatrix
m = imatrix.compute(Path(sys.argv[1]), imatrix.Calibration.load(None), chunks=1, ctx=512)
assert m.entries, "no imatrix entries"
"""


def parse_shape(shape: str) -> tuple[str, int]:
    width, _, layers = shape.partition("-")
    if width not in WIDTHS:
        raise SystemExit(f"unknown width in {shape!r}; use one of {', '.join(WIDTHS)} (e.g. 8b-4)")
    return width, int(layers) if layers else 32 if width == "8b" else 80


def layer_params(width: str) -> int:
    w = WIDTHS[width]
    h, i, kv = w["hidden_size"], w["intermediate_size"], w["num_key_value_heads"] * 128
    return 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h


def timed(cmd: list[str]) -> dict:
    """measure.run, with a failure recorded (its stderr tail) instead of ending the bench."""
    t0 = time.perf_counter()
    try:
        return {**run(cmd, cold=False, env=ENV), "ok": True}
    except SystemExit as e:
        return {"cmd": shlex.join(cmd), "wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mib": None,
                "ok": False, "error": str(e)[-3000:]}


def save(results: list[dict], tokens: int) -> None:
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "omp_threads": 2,
                               "verify_tokens": tokens, "runs": results, "per_layer": per_layer(results)}, indent=2))


def per_layer(results: list[dict]) -> list[dict]:
    """Seconds per layer from two depths of one width, and the fixed part (embedding, head, start-up)."""
    ok = {(r["width"], r["layers"], r["command"]): r["wall_s"] for r in results if r["ok"]}
    out = []
    for (width, n, command), t in ok.items():
        for (w2, n2, c2), t2 in ok.items():
            if w2 == width and c2 == command and n2 > n:
                per = (t2 - t) / (n2 - n)
                out.append({"width": width, "command": command, "layers": [n, n2], "s_per_layer": round(per, 2),
                            "fixed_s": round(t - n * per, 2)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="8b-4,8b-8,70b-4")
    ap.add_argument("--commands", default="verify,imatrix,exl2,gptq")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--work", type=Path, default=Path("/tmp/streambench"))
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints (reused by a later run)")
    a = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from quantkit.fixtures import builtin

    tokenizer = builtin("smollm2")
    commands = a.commands.split(",")
    results = json.loads(OUT.read_text())["runs"] if OUT.is_file() else []

    def record(shape, width, layers, command, r):
        results[:] = [x for x in results if (x["shape"], x["command"]) != (shape, command)]
        r.update(shape=shape, width=width, layers=layers, command=command,
                 peak_rss_gib=round(r["peak_rss_mib"] / 1024, 2) if r["peak_rss_mib"] else None,
                 goal_gib=GOAL_GIB[width])
        results.append(r)
        save(results, a.tokens)
        status = f"{r['wall_s']} s, {r['peak_rss_gib']} GiB" if r["ok"] else "FAILED\n" + r["error"]
        print(f"{shape} {command}: {status}", file=sys.stderr, flush=True)

    for shape in a.shape.split(","):
        width, layers = parse_shape(shape)
        model = a.work / shape
        if not (model / "model.safetensors.index.json").is_file():
            shutil.rmtree(model, ignore_errors=True)
            cfg = json.dumps(WIDTHS[width])
            r = timed([PY, "-c", MAKE, str(HERE), cfg, str(model), "--layers", str(layers),
                       "--tokenizer-from", str(tokenizer)])
            record(shape, width, layers, "make_checkpoint", r)
            if not r["ok"]:
                continue
        out = a.work / f"{shape}-out"
        for command in commands:
            shutil.rmtree(out, ignore_errors=True)
            if command == "verify":
                record(shape, width, layers, "fp8", timed([QUANTKIT, "fp8", str(model), "-o", str(out), "--json"]))
                r = timed([QUANTKIT, "verify", str(out), "--source", str(model), "--tokens", str(a.tokens),
                           "--ctx", "512", "--no-record", "--json"])
            elif command == "imatrix":
                r = timed([PY, "-c", IMATRIX, str(model)])
            elif command == "exl2":
                r = timed([QUANTKIT, "exl2", str(model), "-o", str(out), "--measurement-rows", "1",
                           "--measurement-length", "256", "--rows", "1", "--length", "256", "--json"])
            elif command in ("gptq", "awq"):
                grid = ["--grid", "3"] if command == "awq" else []
                r = timed([QUANTKIT, command, str(model), "-o", str(out), "--samples", "2", "--seq-len", "256",
                           *grid, "--json"])
            else:
                raise SystemExit(f"unknown command {command}; use verify, imatrix, exl2, gptq, awq")
            record(shape, width, layers, command, r)
        shutil.rmtree(out, ignore_errors=True)
        if not a.keep:
            shutil.rmtree(model, ignore_errors=True)

    print("| shape | command | wall s | wall / layers | peak RSS GiB | goal GiB |\n|---|---|---|---|---|---|")
    for r in results:
        wall = r["wall_s"] if r["ok"] else f"failed after {r['wall_s']}"
        rss = r["peak_rss_gib"] if r["ok"] else "-"
        per = round(r["wall_s"] / r["layers"], 1) if r["ok"] else "-"
        print(f"| {r['shape']} | {r['command']} | {wall} | {per} | {rss} | "
              f"{r['goal_gib']} |")
    for p in per_layer(results):
        print(f"{p['width']} {p['command']}: {p['s_per_layer']} s per layer (from {p['layers'][0]} and "
              f"{p['layers'][1]} layers), fixed {p['fixed_s']} s", file=sys.stderr)
    print(f"(layer parameters: 8b {layer_params('8b') / 1e6:.0f} M, 70b {layer_params('70b') / 1e6:.0f} M)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
