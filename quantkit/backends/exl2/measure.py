"""The measurement pass: every candidate mix of every block, quantized with GPTQ and scored.

Hidden states flow through the unquantized model one decoder layer at a time; each candidate is
scored by the block output's relative error, as exllamav2's `accuracy` (residual included) and as
quantkit's `delta_error` (relative to what the block adds to the residual stream).
"""
from __future__ import annotations

from typing import Callable

import torch

from quantkit.backends.exl2.hessians import HESSIAN_OF, block_hessians
from quantkit.streaming import LayerModel, block_forward, linears, swapped_weights
from quantkit.backends.exl2.qparams import unique_per_linear
from quantkit.backends.exl2.quant import gptq, prepare
from quantkit.backends.exl2.shapes import BLOCKS


def _relative_errors(layer, block: str, states, targets, pos) -> tuple[float, float]:
    """Mean over rows of ||y - ref|| / ||ref|| (exllamav2's measure, residual included) and of
    ||y - ref|| / ||ref - x|| (relative to what the block adds to the residual stream)."""
    out = delta = 0.0
    with torch.inference_mode():
        for x, ref in zip(states, targets):
            d = torch.linalg.norm(block_forward(layer, block, x, pos)[0] - ref[0])
            out += float(d / torch.linalg.norm(ref[0]))
            delta += float(d / torch.linalg.norm(ref[0] - x[0]))
    return out / len(states), delta / len(states)


def measure(model: LayerModel, ids: torch.Tensor, step: Callable[[], None], checkpoint=None) -> dict:
    """exllamav2's measurement table: per block key, one option per candidate; `step` after each layer.
    checkpoint (streaming.Checkpoint): the table and hidden states are saved there after each layer, and
    a killed run's are taken up at its next layer."""
    states = list(model.embed(ids)[:, None])
    pos = model.positions(ids.shape[1])
    result, start = {}, 0
    got = checkpoint.load() if checkpoint is not None else None
    if got is not None and got[3].shape == (len(states), *states[0].shape):
        start, meta, _, saved = got
        result = meta["result"]
        states = [torch.from_numpy(saved[w].copy()).to(model.device) for w in range(len(states))]
        for _ in range(start):
            step()
    for i in range(start, model.num_layers):
        with model.layer(i) as layer:
            for block, cands in BLOCKS.items():
                targets, hess = block_hessians(layer, block, states, pos, model.device)
                prepared = {n: prepare(h) for n, h in hess.items()}
                lins = linears(layer, block)
                names = list(lins)
                distinct, maps = unique_per_linear(cands)
                variants: dict[str, list[tuple[torch.Tensor, int]]] = {}
                for n, qps in zip(names, distinct):
                    w = lins[n].weight.data
                    bias = lins[n].bias.numel() if lins[n].bias is not None else 0
                    variants[n] = [(gptq(w, prepared[HESSIAN_OF[n]], qp).weight.half(),
                                    qp.total_bits(w.shape[1], w.shape[0], bias)) for qp in qps]
                del prepared, hess
                opts = []
                for m in maps:
                    chosen = {n: variants[n][j][0].float() for n, j in zip(names, m)}
                    with swapped_weights(lins, chosen):
                        err, delta_err = _relative_errors(layer, block, states, targets, pos)
                    opt = {"accuracy": max(1e-6, 1 - err), "total_bits": sum(variants[n][j][1] for n, j in zip(names, m)),
                           "delta_error": delta_err}
                    opt.update({n: distinct[k][j].to_dict() for k, (n, j) in enumerate(zip(names, m))})
                    opts.append(opt)
                result[f"model.layers.{i}.{block}"] = opts
                states = targets
        if checkpoint is not None and i + 1 < model.num_layers:
            checkpoint.save(i + 1, {"result": result}, {}, states)
        step()
    if checkpoint is not None:
        checkpoint.clear()
    return result
