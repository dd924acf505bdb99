"""The output tensors in exllamav2's compile order, and a quantized Linear's tensors (pack.py)."""
from __future__ import annotations

from quantkit.backends.exl2 import pack
from quantkit.backends.exl2.qparams import QParams
from quantkit.stio import PlannedTensor

LINEAR_TENSORS = ("q_weight", "q_invperm", "q_scale", "q_scale_max", "q_groups", "bias")
BLOCK_NORMS = (("self_attn", "input_layernorm"), ("mlp", "post_attention_layernorm"))  # each block and the norm before it


def linear_plan(key: str, out: int, inp: int, qp: QParams, bias: bool) -> list[PlannedTensor]:
    groups = qp.groups(inp)
    packed_rows = sum(r * b // 32 for b, r in groups)
    g = len(groups)
    shapes = {"q_weight": ("I32", (packed_rows, out)), "q_invperm": ("I32", (inp,)), "q_scale": ("I32", (g, out // 8)),
              "q_scale_max": ("F16", (g,)), "q_groups": ("I16", (2 * g,)), "bias": ("F16", (out,))}
    return [PlannedTensor(f"{key}.{s}", *shapes[s]) for s in LINEAR_TENSORS if s != "bias" or bias]


def tensor_plan(model, mixes: dict[str, dict[str, QParams]], head_qp: QParams) -> list[PlannedTensor]:
    """Every output tensor of `model` (a streaming.LayerModel) quantized with `mixes`, in exllamav2's compile order."""
    h = model.config.hidden_size
    plan = [PlannedTensor("model.embed_tokens.weight", "F16", (model.config.vocab_size, h))]
    for i in range(model.num_layers):
        prefix = f"model.layers.{i}"
        for block, norm in BLOCK_NORMS:
            plan.append(PlannedTensor(f"{prefix}.{norm}.weight", "F16", (h,)))
            for n, qp in mixes[f"{prefix}.{block}"].items():
                key = f"{prefix}.{block}.{n}"
                out, inp = model.shape(key + ".weight")
                plan += linear_plan(key, out, inp, qp, model.has(key + ".bias"))
    plan.append(PlannedTensor("model.norm.weight", "F16", (h,)))
    plan += linear_plan("lm_head", model.config.vocab_size, h, head_qp, False)
    return plan


def write_linear(writer, key: str, qz, bias) -> None:
    """One GPTQ result (quant.Quantized) packed as exllamav2 stores it, through a ShardWriter."""
    t = pack.pack_linear(qz.q.cpu(), qz.groups, qz.code.cpu(), qz.scale_max.cpu(), qz.invperm.cpu(),
                         None if bias is None else bias.data.half().cpu())
    for suffix in LINEAR_TENSORS:
        if suffix in t:
            writer.write(f"{key}.{suffix}", t[suffix])
