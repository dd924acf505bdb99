"""output.safetensors, or output-0000i-of-0000N.safetensors shards over the shard size."""
from __future__ import annotations

from pathlib import Path

import torch

from quantkit.stio import PlannedTensor, StreamWriter


class ShardWriter:
    """Tensors arrive in plan order and go straight to disk, each into its planned shard."""

    def __init__(self, folder: Path, plan: list[PlannedTensor], shard_bytes: int):
        shards: list[list[PlannedTensor]] = [[]]
        size = 0
        for t in plan:
            if shards[-1] and size + t.nbytes > shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(t)
            size += t.nbytes
        n = len(shards)
        self.names = ["output.safetensors"] if n == 1 else [f"output-{i + 1:05}-of-{n:05}.safetensors" for i in range(n)]
        self.folder, self.shards = folder, shards
        self.index = {t.name: k for k, s in enumerate(shards) for t in s}
        self.current: StreamWriter | None = None
        self.k = -1
        self.hashes: dict[str, str] = {}

    def write(self, name: str, tensor: torch.Tensor) -> None:
        k = self.index[name]
        if k != self.k:
            self._close_current()
            self.k = k
            self.current = StreamWriter(self.folder / self.names[k], self.shards[k], {"format": "pt"})
        self.current.write(name, tensor.contiguous())

    def _close_current(self) -> None:
        if self.current is not None:
            self.hashes[self.names[self.k]] = self.current.close()
            self.current = None

    def close(self) -> dict[str, str]:
        """Finish the last shard; sha256 per file name."""
        self._close_current()
        return self.hashes

    def abort(self) -> None:
        if self.current is not None:
            self.current.abort()
