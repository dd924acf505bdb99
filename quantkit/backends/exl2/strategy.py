"""From a measurement to one bit mix per block (optimize.py solves the choice).

What the optimiser minimises per block and candidate (both are measured and kept in measurement.json):
- delta: error relative to what the block adds to the residual stream, ||y - ref|| / ||ref - x|| (quantkit);
- output: error relative to the block's output, residual included, ||y - ref|| / ||ref|| (exllamav2's 1 - accuracy).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from quantkit.backends.exl2.optimize import optimize
from quantkit.backends.exl2.qparams import QParams
from quantkit.backends.exl2.shapes import ModelShapes, block_keys, mix_of


class BlockChoice(NamedTuple):
    bpw: float  # of the chosen candidate, over the block's weights
    error: float  # its measured error under the objective


@dataclass(frozen=True)
class Strategy:
    mixes: dict[str, dict[str, QParams]]  # "model.layers.i.block" -> linear name -> its QParams
    bpw_achieved: float  # over every decoder Linear, as exllamav2 counts it
    blocks: dict[str, BlockChoice]


def choose(measurement: dict, shapes: ModelShapes, bpw: float, objective: str) -> Strategy:
    """The mixes that meet `bpw` with the least error under `objective` ("delta" or "output")."""
    keys = block_keys(shapes.layers)
    slots = [[(int(o["total_bits"]), float(o["delta_error"]) if objective == "delta" else 1 - float(o["accuracy"]))
              for o in measurement[key]] for key, _, _ in keys]
    choice = optimize(slots, int(shapes.numel * bpw))
    mixes, blocks = {}, {}
    for (key, layer, block), slot, j in zip(keys, slots, choice.picks):
        mixes[key] = mix_of(measurement[key][j], block)
        blocks[key] = BlockChoice(round(slot[j][0] / shapes.block_numel(layer, block), 4), round(slot[j][1], 8))
    return Strategy(mixes, choice.bits / shapes.numel, blocks)
