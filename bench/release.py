"""A whole release: `quantkit run` on a recipe, its rerun, and `quantkit publish` of every artifact.

    python bench/release.py [--recipe recipes/smollm2.yaml] [--work DIR]

1. `quantkit run RECIPE` into an empty folder (cold page cache when allowed): wall time and peak
   RSS of the whole release, and each artifact's share from release.json.
2. The same command again: every artifact complete, so it is reused (the cost of resuming).
3. `quantkit publish` of each artifact to a local fake Hub (tests/hubserver.py, in memory, LFS
   transfers over loopback HTTP) and again (nothing to upload): the cost of quantkit's own
   checks (sha256 of every file against quantkit.json, the remote tree comparison), not of a
   real network.
Prints markdown tables and writes bench/out/release-<recipe>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from measure import run

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def fake_hub():
    sys.path.insert(0, str(ROOT / "tests"))
    from hubserver import FakeHub, Handler

    state = FakeHub(token="hf_bench_" + secrets.token_hex(8))
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (Handler,), {"hub": state}))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return state


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "smollm2.yaml")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    quantkit = str(Path(sys.executable).with_name("quantkit"))
    work = Path(args.work or tempfile.mkdtemp(prefix="quantkit-release-")).resolve()
    rel = work / "rel"
    shutil.rmtree(rel, ignore_errors=True)
    cmd = [quantkit, "run", str(args.recipe), "-o", str(rel), "--json"]
    first = run(cmd)
    report = json.loads((rel / "release.json").read_text())
    again = run(cmd, cold=False)
    rerun_report = json.loads((rel / "release.json").read_text())
    assert all(a["status"] == "reused" for a in rerun_report["artifacts"]), rerun_report

    hub = fake_hub()
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token, "HF_HUB_DISABLE_XET": "1",
           "HF_HOME": str(work / "hf-home"), "NO_PROXY": "127.0.0.1,localhost"}
    publishes = []
    for a in report["artifacts"]:
        repo = f"quantkit-test/{a['name']}"
        pcmd = [quantkit, "publish", a["folder"], "--repo", repo, "--json"]
        up = run(pcmd, cold=False, env=env)
        re_up = run(pcmd, cold=False, env=env)
        publishes.append({"artifact": a["name"], "bytes": a["size_bytes"], "first": up, "rerun": re_up})

    out = {"recipe": args.recipe.name, "cpus": os.cpu_count(), "run": first, "rerun": again,
           "artifacts": [{k: a[k] for k in ("name", "format", "size_bytes", "wall_s", "status")} for a in report["artifacts"]],
           "publish": publishes}
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / f"release-{args.recipe.stem}.json").write_text(json.dumps(out, indent=2) + "\n")

    print(f"| step | wall (s) | peak RSS (MiB) |\n|---|---|---|")
    print(f"| quantkit run {args.recipe.name} (fresh) | {first['wall_s']} | {first['peak_rss_mib']} |")
    print(f"| same command again (all reused) | {again['wall_s']} | {again['peak_rss_mib']} |")
    print("\n| artifact | format | size (MiB) | convert + verify (s) | publish (s) | publish again (s) |\n|---|---|---|---|---|---|")
    for a, p in zip(out["artifacts"], publishes):
        print(f"| {a['name']} | {a['format']} | {a['size_bytes'] / 2**20:.1f} | {a['wall_s']:.1f} | "
              f"{p['first']['wall_s']} | {p['rerun']['wall_s']} |")


if __name__ == "__main__":
    main()
