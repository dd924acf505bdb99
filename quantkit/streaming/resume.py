"""Resume a long layer-by-layer pass after a kill: its state after each layer, kept in the cache.

A pass (an importance matrix, an EXL2 measurement) saves, after every decoder layer, how many
layers are done, its partial results and the hidden states of all windows into
`<cache>/resume/<kind>/<key>/step-N/`, then points `latest` at it (written atomically), then removes
the older step. The key is a hash of what the result depends on: the source's weight files (name,
size and modification time of each, and config.json's bytes), the options and the token windows.
A run that finds a step for its key starts at the next layer; a finished pass removes its folder.
Arrays are .npy/.npz read with allow_pickle=False.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from quantkit.output import write_text_atomic
from quantkit.paths import cache_dir
from quantkit.streaming.states import States


def source_key(folder: Path) -> list:
    """What identifies a checkpoint folder's weights without reading them all."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    config = folder / "config.json"
    return [hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
            [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]]


class Checkpoint:
    def __init__(self, kind: str, key: dict):
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
        self.folder = cache_dir("resume", kind, digest)

    def load(self) -> tuple[int, dict, dict[str, np.ndarray], np.ndarray] | None:
        """(layers done, meta, arrays, states memory-mapped) of the last saved step, or None."""
        latest = self.folder / "latest"
        try:
            step = self.folder / latest.read_text().strip()
            meta = json.loads((step / "meta.json").read_text())
            with np.load(step / "arrays.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            states = np.load(step / "states.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, KeyError):
            return None
        return int(meta["done"]), meta, arrays, states

    def save(self, done: int, meta: dict, arrays: dict[str, np.ndarray], states: States | list) -> None:
        """After `done` layers: meta (JSON), arrays and every window's hidden state (a States or a list of tensors)."""
        step = self.folder / f"step-{done}"
        shutil.rmtree(step, ignore_errors=True)
        step.mkdir(parents=True)
        out = np.lib.format.open_memmap(step / "states.npy", mode="w+", dtype=np.float32, shape=(len(states), *states[0].shape))
        for i in range(len(states)):
            out[i] = states[i].detach().float().cpu().numpy()
        out.flush()
        del out
        np.savez(step / "arrays.npz", **arrays)
        (step / "meta.json").write_text(json.dumps({**meta, "done": done}))
        for f in step.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        write_text_atomic(self.folder / "latest", step.name)
        for old in self.folder.glob("step-*"):
            if old != step:
                shutil.rmtree(old, ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
