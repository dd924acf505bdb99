"""EXL2 on SmolLM2-135M-Instruct (builtin:smollm2), CPU: time and peak RSS, then quality.

    python bench/exl2.py [--rows 16] [--length 512] [--measurement-rows 4] [--measurement-length 512] [--tokens 8192]

Runs, in fresh processes:
1. quantkit exl2 --bpw 8.0 --head-bits 8 (measures, writes measurement.json);
2. quantkit exl2 --bpw 4.0 --head-bits 6 --measurement <1>/measurement.json (no measuring);
3. quantkit exl2 --bpw 4.0 --head-bits 6 measuring from scratch (what a first 4.0 run costs);
then `quantkit verify` of the 8.0 and 4.0 artifacts against the source. exllamav2's own
converter cannot run here (it needs CUDA), so there is no upstream figure to set beside these.
Writes bench/out/exl2.json.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--measurement-rows", type=int, default=4)
    ap.add_argument("--measurement-length", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--work", type=Path, default=HERE / "out" / "exl2-work")
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    cal = ["--rows", str(a.rows), "--length", str(a.length), "--measurement-rows", str(a.measurement_rows),
           "--measurement-length", str(a.measurement_length)]
    base = [PY, "-m", "quantkit", "exl2", "builtin:smollm2", "--json"]
    jobs = {
        "8.0 bpw, head 8 (measures)": [*base, "-o", str(a.work / "8.0"), "--bpw", "8.0", "--head-bits", "8", *cal],
        "4.0 bpw, head 6 (reuses the measurement)": [*base, "-o", str(a.work / "4.0"), "--bpw", "4.0", "--head-bits", "6",
                                                     "--measurement", str(a.work / "8.0" / "measurement.json"), *cal],
        "4.0 bpw, head 6 (measures)": [*base, "-o", str(a.work / "4.0-measured"), "--bpw", "4.0", "--head-bits", "6", *cal],
    }
    runs = {}
    for name, cmd in jobs.items():
        runs[name] = run(cmd, cold=False)
        folder = Path(cmd[cmd.index("-o") + 1])
        m = json.loads((folder / "quantkit.json").read_text())
        runs[name].update(bpw_achieved=m["parameters"]["bpw_achieved"], timings=m["parameters"]["timings"],
                          size_bytes=sum(f["bytes"] for f in m["files"].values()))
        print(f"{name}: {runs[name]['wall_s']} s, {runs[name]['peak_rss_mib']} MiB, "
              f"bpw {runs[name]['bpw_achieved']}, {runs[name]['timings']}", flush=True)
    v = subprocess.run([PY, "-m", "quantkit", "verify", str(a.work / "8.0"), str(a.work / "4.0"), "--source",
                        "builtin:smollm2", "--tokens", str(a.tokens), "--json", "--no-record",
                        "--chart", str(a.work / "chart.png")], check=True, capture_output=True, text=True)
    quality = json.loads(v.stdout)
    for q in quality:
        print(f"{q['artifact']}: PPL {q['ppl_source']:.3f} -> {q['ppl_quant']:.3f} (ratio {q['ppl_ratio']:.4f}), "
              f"KLD {q['kld_mean']:.5f}, top-1 {100 * q['top1_agreement']:.2f}%")
    out = HERE / "out" / "exl2.json"
    out.write_text(json.dumps({"settings": vars(a) | {"work": str(a.work)}, "runs": runs, "verify": quality}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
