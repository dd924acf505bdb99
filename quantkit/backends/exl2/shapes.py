"""The decoder Linears' shapes from the source's headers, and the bits each candidate mix gives them.

Torch-free: `check` reads them before any work (bpw range, a reused measurement's bit counts).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from quantkit.backends.exl2.qparams import ATTN_CANDIDATES, ATTN_LINEARS, MLP_CANDIDATES, MLP_LINEARS, QParams

if TYPE_CHECKING:
    from quantkit.source import Source

BLOCKS = {"self_attn": ATTN_CANDIDATES, "mlp": MLP_CANDIDATES}  # block -> its candidate mixes
LINEARS = {"self_attn": ATTN_LINEARS, "mlp": MLP_LINEARS}  # block -> its Linears, in the tables' order


class LinearShape(NamedTuple):
    layer: int
    name: str  # "block.linear", e.g. "mlp.down_proj"
    out: int
    inp: int


@dataclass(frozen=True)
class ModelShapes:
    """Every decoder Linear of one model, sorted by layer and name."""

    linears: tuple[LinearShape, ...]

    @classmethod
    def of(cls, source: Source) -> ModelShapes:
        out = []
        for h in source.headers.values():
            for name, t in h.tensors.items():
                parts = name.split(".")
                if len(parts) == 6 and parts[0] == "model" and parts[1] == "layers" and parts[5] == "weight" \
                        and parts[3] in BLOCKS:
                    o, i = t.shape
                    out.append(LinearShape(int(parts[2]), f"{parts[3]}.{parts[4]}", o, i))
        return cls(tuple(sorted(out)))

    @property
    def numel(self) -> int:
        return sum(s.out * s.inp for s in self.linears)

    @property
    def layers(self) -> int:
        return 1 + max(s.layer for s in self.linears)

    def not_multiple_of_32(self) -> list[str]:
        """'inxout' of every Linear size EXL2 cannot store."""
        return sorted({f"{s.inp}x{s.out}" for s in self.linears if s.inp % 32 or s.out % 32})

    def block(self, layer: int, block: str) -> dict[str, tuple[int, int]]:
        """linear name -> (out, in) for one block, in the candidate tables' order."""
        shapes = {s.name.split(".")[1]: (s.out, s.inp) for s in self.linears
                  if s.layer == layer and s.name.startswith(block + ".")}
        return {n: shapes[n] for n in LINEARS[block]}

    def block_numel(self, layer: int, block: str) -> int:
        return sum(o * i for o, i in self.block(layer, block).values())

    def bits(self, layer: int, block: str, qps) -> int:
        """Storage bits of one block quantized with `qps` (one QParams per Linear)."""
        return sum(qp.total_bits(i, o) for qp, (o, i) in zip(qps, self.block(layer, block).values()))

    def bpw_range(self) -> tuple[float, float]:
        """The lowest and highest bits per weight the candidate mixes reach."""
        lo = hi = 0
        for layer in range(self.layers):
            for block, cands in BLOCKS.items():
                bits = [self.bits(layer, block, row) for row in cands]
                lo, hi = lo + min(bits), hi + max(bits)
        return lo / self.numel, hi / self.numel


def block_keys(layers: int) -> list[tuple[str, int, str]]:
    """(measurement key, layer, block) for every block, in model order."""
    return [(f"model.layers.{layer}.{block}", layer, block) for layer in range(layers) for block in BLOCKS]


def mix_of(option: dict, block: str) -> dict[str, QParams]:
    """A measurement option's QParams per Linear of `block`."""
    return {n: QParams.from_dict(option[n]) for n in LINEARS[block]}
