"""The output contract every backend shares.

An artifact is built in a hidden sibling folder (`.NAME.partial-PID`) and renamed
into place only when complete, so an interrupted or killed run never leaves a
folder that looks finished. Stale partial folders of dead runs are removed by
the next run. An existing output is replaced only with --force.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from quantkit.errors import Interrupted, OutputError

PARTIAL = ".partial-"
MANIFEST = "quantkit.json"
CARD = "README.md"  # the model card: written from the manifest, so not hashed in it (verify rewrites it)
UNHASHED = (MANIFEST, CARD)


def check_target(final: Path, force: bool) -> Path:
    final = Path(final).expanduser().absolute()
    if final.exists() and not force:
        raise OutputError(f"{final} already exists; pass --force to replace it, or -o to choose another folder")
    if final.exists() and not final.is_dir():
        raise OutputError(f"{final} is a file, not an artifact folder; choose another -o")
    anc = final.parent
    while not anc.exists():
        anc = anc.parent
    if not os.access(anc, os.W_OK):
        raise OutputError(f"cannot write in {anc}; choose an -o you can write to")
    return final


def check_free_space(final: Path, needed: int) -> None:
    anc = final.parent
    while not anc.exists():
        anc = anc.parent
    free = shutil.disk_usage(anc).free
    if needed > free:
        raise OutputError(
            f"not enough free disk for the output: needs about {needed / 2**30:.2f} GiB, "
            f"{anc} has {free / 2**30:.2f} GiB free; free space or choose another -o"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(final: Path) -> None:
    if not final.parent.exists():
        return
    for p in final.parent.glob(f".{final.name}{PARTIAL}*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def staged(final: Path) -> Iterator[Path]:
    """Yield a fresh staging folder; on success rename it to `final` (replacing it)."""
    remove_stale_partials(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}{PARTIAL}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()

    def on_term(signum, frame):
        # Raising here could land inside a queue or lock of a worker thread and
        # deadlock the clean-up, so remove the partial folder and leave at once.
        shutil.rmtree(staging, ignore_errors=True)
        os.write(2, b"quantkit: error: stopped by SIGTERM; the partial output was removed\n")
        os._exit(130)

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield staging
        signal.signal(signal.SIGTERM, old)
        if final.exists():
            old_dir = final.parent / f".{final.name}.replaced-{os.getpid()}"
            final.rename(old_dir)
            staging.rename(final)
            shutil.rmtree(old_dir, ignore_errors=True)
        else:
            staging.rename(final)
    except KeyboardInterrupt:
        shutil.rmtree(staging, ignore_errors=True)
        raise Interrupted("interrupted; the partial output was removed") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, old)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def copy_carried(files: list[Path], staging: Path) -> list[str]:
    names = []
    for f in files:
        shutil.copyfile(f, staging / f.name)
        names.append(f.name)
    return names


def file_table(folder: Path, known: dict[str, str]) -> dict[str, dict]:
    """bytes and sha256 of every file in the artifact; hashes computed while writing are reused."""
    table = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in UNHASHED:
            table[rel] = {"bytes": p.stat().st_size, "sha256": known.get(rel) or sha256_file(p)}
    return table


def write_json(path: Path, data: dict, sort_keys: bool = False) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def read_manifest(folder: Path) -> dict | None:
    p = Path(folder) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def changed_files(folder: Path, manifest: dict, hashes: bool = True) -> list[str]:
    """Files of an artifact that no longer match its manifest: missing, resized, or (with `hashes`)
    different content. Files the manifest does not list are not its business."""
    problems = []
    for rel, entry in manifest.get("files", {}).items():
        p = Path(folder) / rel
        if not p.is_file():
            problems.append(f"{rel} is missing")
        elif p.stat().st_size != entry["bytes"]:
            problems.append(f"{rel} has {p.stat().st_size} bytes, the manifest says {entry['bytes']}")
        elif hashes and sha256_file(p) != entry["sha256"]:
            problems.append(f"{rel} has changed since it was written (sha256 differs from the manifest)")
    return problems


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
