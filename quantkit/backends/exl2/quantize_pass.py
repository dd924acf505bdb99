"""The quantization pass: GPTQ with the chosen mixes, hidden states flowing through the already
quantized layers; the head with its own mix. Every tensor goes to the ShardWriter in plan order."""
from __future__ import annotations

from typing import Callable

import torch

from quantkit.backends.exl2.hessians import HESSIAN_OF, block_hessians
from quantkit.backends.exl2.layout import BLOCK_NORMS, write_linear
from quantkit.streaming import LayerModel, block_forward, linears
from quantkit.backends.exl2.qparams import QParams
from quantkit.backends.exl2.quant import Hessian, gptq, prepare
from quantkit.backends.exl2.shards import ShardWriter


def quantize(model: LayerModel, ids: torch.Tensor, mixes: dict[str, dict[str, QParams]], head_qp: QParams,
             writer: ShardWriter, step: Callable[[], None]) -> dict[str, float]:
    """Quantize and write the whole model; `step` after each layer. Returns each block's rfn error."""
    emb_name = "model.embed_tokens.weight"
    emb = model.tensor(emb_name, torch.float16)
    writer.write(emb_name, emb.cpu())
    states = [emb[r].float()[None].to(model.device) for r in ids]
    del emb
    pos = model.positions(ids.shape[1])
    errors = {}
    for i in range(model.num_layers):
        prefix = f"model.layers.{i}"
        with model.layer(i) as layer:
            for block, norm in BLOCK_NORMS:
                writer.write(f"{prefix}.{norm}.weight", getattr(layer, norm).weight.data.half().cpu())
                targets, hess = block_hessians(layer, block, states, pos, model.device)
                prepared = {n: prepare(h) for n, h in hess.items()}
                del hess
                lins = linears(layer, block)
                for n, lin in lins.items():
                    qz = gptq(lin.weight.data, prepared[HESSIAN_OF[n]], mixes[f"{prefix}.{block}"][n])
                    write_linear(writer, f"{prefix}.{block}.{n}", qz, lin.bias)
                    lin.weight.data = qz.weight  # later blocks see the quantized layer
                del prepared
                with torch.inference_mode():
                    new = [block_forward(layer, block, x, pos) for x in states]
                errors[f"{prefix}.{block}"] = round(sum(
                    float(torch.linalg.norm(y[0] - r[0]) / torch.linalg.norm(r[0])) for y, r in zip(new, targets)) / len(new), 8)
                states = new
                del targets
        step()
    norm = model.final_norm()
    writer.write("model.norm.weight", norm.weight.data.half().cpu())
    hess = Hessian(model.config.hidden_size, model.device)
    with torch.inference_mode():
        for x in states:
            hess.add(norm(x))
    qz = gptq(model.head_weight(), prepare(hess), head_qp)
    write_linear(writer, "lm_head", qz, None)
    return errors
