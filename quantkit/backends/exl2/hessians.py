"""A block's reference outputs and the Hessians of its Linears' inputs, for measuring and quantizing."""
from __future__ import annotations

import torch

from quantkit.streaming import block_forward, linears, watch_inputs
from quantkit.backends.exl2.quant import Hessian

# Which Linear's input feeds which Hessian, and which Linears share it (exllamav2's reuse_h).
HESSIAN_OF = {"q_proj": "q_proj", "k_proj": "q_proj", "v_proj": "q_proj", "o_proj": "o_proj",
              "gate_proj": "up_proj", "up_proj": "up_proj", "down_proj": "down_proj"}


def block_hessians(layer, block: str, states: list[torch.Tensor], pos, device) -> tuple[list[torch.Tensor], dict[str, Hessian]]:
    """Reference outputs of the block, and the Hessians of its Linears' inputs."""
    lins = linears(layer, block)
    hess = {n: Hessian(lins[n].in_features, device) for n in set(HESSIAN_OF[k] for k in lins)}

    def add(name: str, x: torch.Tensor) -> None:
        hess[name].add(x)

    targets = []
    with watch_inputs({n: lins[n] for n in hess}, add), torch.inference_mode():
        for x in states:
            targets.append(block_forward(layer, block, x, pos))
    return targets, hess
