"""Run a command and report its wall time and peak RSS (from the kernel, via wait4)."""
from __future__ import annotations

import os
import subprocess
import tempfile
import time


def drop_caches() -> bool:
    """Empty the page cache so every run reads from disk (root only; returns False if not allowed)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def run(cmd: list[str], cold: bool = True, env: dict | None = None) -> dict:
    dropped = drop_caches() if cold else False
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty tool must not block on a full pipe
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        log.seek(0)
        err = log.read().decode(errors="replace")
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}):\n{err[-3000:]}")
    return {"cmd": " ".join(cmd), "wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "cold_cache": dropped}
