"""EXL2 bit mixes (QParams) and the candidate tables the measurement tries.

A QParams says how one Linear is quantized: a list of bit widths, the share of
input rows each gets, and a group size per width. Rows are taken in act-order
(largest Hessian diagonal first), so the widest bits go to the inputs that
matter most. The tables below are exllamav2 0.3.2's (conversion/qparams.py):
one row per candidate for a whole attention block (q, k, v, o) or MLP block
(gate, up, down), from about 2.1 to 8.1 bits per weight, and the head options
for --head-bits. measurement.json stores QParams in exllamav2's own dict form
(group_size keyed by bits), so a measurement written by either tool is read by
the other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SCALE_BITS = 4  # exllamav2 stores 4-bit scale codes only


@dataclass(frozen=True)
class QParams:
    bits: tuple[int, ...]
    bits_prop: tuple[float, ...]
    group_size: tuple[int, ...]  # one per entry of bits

    @classmethod
    def make(cls, group_size, bits, bits_prop) -> "QParams":
        gs = tuple(group_size) if isinstance(group_size, (list, tuple)) else (group_size,) * len(bits)
        return cls(tuple(bits), tuple(bits_prop), gs)

    def group_of(self, bits: int) -> int:
        return self.group_size[self.bits.index(bits)]

    @property
    def desc(self) -> str:
        return "/".join(f"{p}:{b}b_{g}g" for b, p, g in zip(self.bits, self.bits_prop, self.group_size)) + f" s{SCALE_BITS}"

    def groups(self, rows: int) -> list[tuple[int, int]]:
        """(bits, rows) for every group, in storage order; the last group may be short."""
        out: list[tuple[int, int]] = []
        remaining = rows
        for b, p, g in zip(self.bits, self.bits_prop, self.group_size):
            n = math.ceil(min(rows * p, remaining) / g)
            for _ in range(n):
                take = min(g, max(remaining, 0))
                out.append((b, take))
                remaining -= g
        if remaining > 0:
            raise ValueError(f"{self.desc} leaves {remaining} rows of {rows} unassigned")
        return out

    def total_bits(self, rows: int, columns: int, bias: int = 0) -> int:
        """Storage bits of one Linear ([rows=in, columns=out]) as exllamav2 counts them."""
        groups = self.groups(rows)
        total = sum(r * columns * b for b, r in groups)  # q_weight
        total += len(groups) * 16  # q_scale_max
        total += len(groups) * 32  # q_groups
        total += len(groups) * columns * SCALE_BITS  # q_scale
        total += rows * 32  # q_invperm
        total += 16 * bias
        return total

    def to_dict(self) -> dict:
        return {"group_size": {str(b): g for b, g in zip(self.bits, self.group_size)}, "bits": list(self.bits),
                "bits_prop": list(self.bits_prop), "scale_bits": SCALE_BITS}

    @classmethod
    def from_dict(cls, d: dict) -> "QParams":
        gs = d["group_size"]
        bits = [int(b) for b in d["bits"]]
        if isinstance(gs, dict):
            gs = [int(gs[str(b)] if str(b) in gs else gs[b]) for b in bits]
        if int(d.get("scale_bits", SCALE_BITS)) != SCALE_BITS:
            raise ValueError("only 4-bit scales exist in EXL2")
        return cls.make(gs, bits, [float(p) for p in d["bits_prop"]])


def _q(group_size, bits, prop) -> QParams:
    return QParams.make(group_size, bits, prop)


# One row per candidate: (q_proj, k_proj, v_proj, o_proj).
ATTN_CANDIDATES: list[tuple[QParams, ...]] = [
    (_q(64, [3, 2], [0.05, 0.95]),) * 4,
    (_q(64, [3, 2], [0.1, 0.9]), _q(64, [3, 2], [0.1, 0.9]), _q(64, [3, 2], [0.25, 0.75]), _q(64, [3, 2], [0.1, 0.9])),
    (_q(64, [3, 2], [0.1, 0.9]), _q(64, [3, 2], [0.1, 0.9]), _q(128, [4, 3], [0.1, 0.9]), _q(64, [3, 2], [0.1, 0.9])),
    (_q(64, [3, 2], [0.1, 0.9]), _q(64, [3, 2], [0.1, 0.9]), _q(128, [4, 3], [0.1, 0.9]), _q(128, [4, 3], [0.1, 0.9])),
    (_q(128, [4, 3], [0.1, 0.9]),) * 4,
    (_q(128, [4, 3], [0.1, 0.9]), _q(128, [4, 3], [0.1, 0.9]), _q(64, [4, 3], [0.1, 0.9]), _q(128, [4, 3], [0.1, 0.9])),
    (_q(128, [4], [1]),) * 4,
    (_q(128, [4], [1]), _q(128, [4], [1]), _q(64, [4], [1]), _q(128, [4], [1])),
    (_q(64, [4], [1]), _q(64, [4], [1]), _q(32, [4], [1]), _q(64, [4], [1])),
    (_q(32, [4], [1]),) * 4,
    (_q(128, [5, 4], [0.1, 0.9]), _q(128, [5, 4], [0.1, 0.9]), _q(64, [5, 4], [0.1, 0.9]), _q(128, [5, 4], [0.1, 0.9])),
    (_q(64, [5, 4], [0.1, 0.9]), _q(64, [5, 4], [0.1, 0.9]), _q(32, [5, 4], [0.1, 0.9]), _q(64, [5, 4], [0.1, 0.9])),
    (_q(64, [5, 4], [0.1, 0.9]), _q(64, [5, 4], [0.1, 0.9]), _q(64, [5], [1]), _q(64, [5, 4], [0.1, 0.9])),
    (_q(32, [5, 4], [0.1, 0.9]), _q(32, [5, 4], [0.1, 0.9]), _q(32, [5], [1]), _q(32, [5, 4], [0.1, 0.9])),
    (_q(128, [6, 5], [0.1, 0.9]), _q(128, [6, 5], [0.1, 0.9]), _q(128, [6], [1]), _q(128, [6, 5], [0.1, 0.9])),
    (_q(32, [6, 5], [0.1, 0.9]), _q(32, [6, 5], [0.1, 0.9]), _q(32, [6], [1]), _q(32, [6, 5], [0.1, 0.9])),
    (_q(128, [6], [1]),) * 4,
    (_q(32, [6], [1]), _q(32, [6], [1]), _q(32, [8], [1]), _q(32, [6], [1])),
    (_q(128, [8], [1]),) * 4,
]

# One row per candidate: (gate_proj, up_proj, down_proj).
MLP_CANDIDATES: list[tuple[QParams, ...]] = [
    (_q(64, [3, 2], [0.05, 0.95]), _q(64, [3, 2], [0.05, 0.95]), _q([32, 64, 64], [6, 3, 2], [0.05, 0.2, 0.75])),
    (_q(64, [3, 2], [0.1, 0.9]), _q(64, [3, 2], [0.25, 0.75]), _q([32, 64, 64], [6, 3, 2], [0.05, 0.2, 0.75])),
    (_q(64, [3, 2], [0.1, 0.9]), _q(64, [3, 2], [0.3, 0.7]), _q(32, [5, 3], [0.05, 0.95])),
    (_q(64, [3, 2], [0.1, 0.9]), _q(64, [3, 2], [0.3, 0.7]), _q(32, [5, 4], [0.05, 0.95])),
    (_q(128, [4, 3], [0.1, 0.9]), _q(128, [4, 3], [0.25, 0.75]), _q([32, 128, 128], [8, 4, 3], [0.05, 0.1, 0.85])),
    (_q(32, [4, 3], [0.1, 0.9]), _q(32, [4, 3], [0.25, 0.75]), _q([32, 32, 32], [8, 4, 3], [0.05, 0.1, 0.85])),
    (_q(32, [4, 3], [0.1, 0.9]), _q(32, [4, 3], [0.25, 0.75]), _q([32, 128], [8, 4], [0.05, 0.95])),
    (_q(128, [4], [1]), _q(32, [4], [1]), _q([32, 128], [8, 4], [0.05, 0.95])),
    (_q(32, [4], [1]), _q(32, [4], [1]), _q([32, 32], [8, 4], [0.05, 0.95])),
    (_q(128, [5, 4], [0.1, 0.9]), _q(128, [5, 4], [0.25, 0.75]), _q([32, 128, 128], [8, 5, 4], [0.05, 0.1, 0.85])),
    (_q(32, [5, 4], [0.1, 0.9]), _q(32, [5, 4], [0.25, 0.75]), _q([32, 32, 32], [8, 5, 4], [0.05, 0.1, 0.85])),
    (_q(128, [6, 5], [0.1, 0.9]), _q(128, [6, 5], [0.25, 0.75]), _q([32, 128, 128], [8, 6, 5], [0.05, 0.1, 0.85])),
    (_q(32, [6, 5], [0.1, 0.9]), _q(32, [6, 5], [0.25, 0.75]), _q([32, 32, 32], [8, 6, 5], [0.05, 0.1, 0.85])),
    (_q(128, [6], [1]), _q(128, [6], [1]), _q([32, 128], [8, 6], [0.05, 0.95])),
    (_q(128, [8, 6], [0.1, 0.9]), _q(128, [8, 6], [0.1, 0.9]), _q(128, [8, 6], [0.15, 0.85])),
    (_q(128, [8, 6], [0.1, 0.9]), _q(128, [8, 6], [0.1, 0.9]), _q(128, [8], [1])),
    (_q(128, [8], [1]),) * 3,
]

ATTN_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")

# --head-bits -> the head's QParams
HEAD_OPTIONS: dict[int, QParams] = {
    2: _q(32, [4, 2], [0.3, 0.7]),
    3: _q(32, [4, 3], [0.15, 0.85]),
    4: _q(32, [6, 4], [0.15, 0.85]),
    5: _q(128, [6, 5], [0.15, 0.85]),
    6: _q(128, [8, 6], [0.15, 0.85]),
    8: _q(128, [8], [1.0]),
}


def unique_per_linear(candidates: list[tuple[QParams, ...]]) -> tuple[list[list[QParams]], list[tuple[int, ...]]]:
    """Each Linear's distinct QParams, and for every candidate the index of its QParams in those
    lists: a Linear is quantized once per distinct QParams, not once per candidate."""
    width = len(candidates[0])
    distinct: list[list[QParams]] = [[] for _ in range(width)]
    maps = []
    for row in candidates:
        idx = []
        for j, qp in enumerate(row):
            if qp not in distinct[j]:
                distinct[j].append(qp)
            idx.append(distinct[j].index(qp))
        maps.append(tuple(idx))
    return distinct, maps
