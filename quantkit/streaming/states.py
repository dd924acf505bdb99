"""Hidden states (or any per-window arrays) of every window, in memory up to a budget, on disk above it.

A store holds one float32 array per window, all of the same shape. While the total fits the
budget they are plain tensors; above it the store is a memory-mapped file in a temporary folder
(removed on close), so a 405B's 4,096-token states cost disk, not RAM.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import torch

# Bytes of states kept in memory before a store goes to disk (QUANTKIT_STATE_BUDGET_MB overrides).
DEFAULT_BUDGET = 2 * 1024**3


def budget() -> int:
    mb = os.environ.get("QUANTKIT_STATE_BUDGET_MB")
    return int(mb) * 1024**2 if mb else DEFAULT_BUDGET


class States:
    def __init__(self, count: int, shape: tuple[int, ...], limit: int | None = None, device: torch.device | None = None):
        self.count, self.shape = count, tuple(shape)
        self.device = device or torch.device("cpu")
        total = count * int(np.prod(shape)) * 4
        self._dir = None
        if total > (budget() if limit is None else limit):
            self._dir = tempfile.mkdtemp(prefix="quantkit-states-")
            self._disk = np.lib.format.open_memmap(os.path.join(self._dir, "states.npy"), mode="w+",
                                                   dtype=np.float32, shape=(count, *shape))
            self._mem = None
        else:
            self._mem: list[torch.Tensor | None] = [None] * count

    @property
    def on_disk(self) -> bool:
        return self._dir is not None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._mem is not None:
            return self._mem[i]
        return torch.from_numpy(np.array(self._disk[i])).to(self.device)

    def __setitem__(self, i: int, x: torch.Tensor) -> None:
        if tuple(x.shape) != self.shape:
            raise ValueError(f"state of shape {tuple(x.shape)} in a store of {self.shape}")
        if self._mem is not None:
            self._mem[i] = x
        else:
            self._disk[i] = x.detach().float().cpu().numpy()

    def close(self) -> None:
        self._mem = None
        if self._dir is not None:
            self._disk = None
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
