"""Data-free compressed-tensors schemes (FP8_BLOCK, NVFP4A16, MXFP4, MXFP4A16, W8A16, W8A8 round-to-nearest),
streamed tensor by tensor.

The arithmetic is llm-compressor's own: each Linear weight (or each fused set of them, for the microscale
schemes whose q/k/v and gate/up share one global scale) goes through `ModelFreePtqConverter.process`, the
function `model_free_ptq` applies to whole shards, and the config block is the one it writes. What is
ours is the streaming: `model_free_ptq` loads a whole shard (several GB) and its fused partners; here a
shard is read front to back and written as it is read, so memory holds one weight matrix, or one fused
set (gate and up of one layer: 2 x 14336 x 4096 BF16 on an 8B), whatever the shard size. A fused set's
outputs are written where its last member lies (partners read earlier, in this shard or an earlier one,
are held until then); model_free_ptq writes them with its first member instead, which changes no tensor,
only the index. tests/test_schemes.py checks every tensor and the config block against model_free_ptq.

The safetensors header is written before the data (stio.StreamWriter), so each tensor's output names,
dtypes and shapes are planned first by running the same converter on meta tensors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from quantkit import output
from quantkit.backends.base import BackendResult, Progress
from quantkit.source import Source
from quantkit.stio import DTYPES, TORCH_TO_ST, PlannedTensor, StreamWriter, shard_names, transcribe

# Kept in the source dtype, as llm-compressor names them in the config (embeddings must be listed: the
# library selects every `<module>.weight` not named like a norm, and transformers loads quantized
# embeddings wrongly).
IGNORE = ["lm_head", "re:.*embed_tokens"]


def converter(scheme: str):
    """llm-compressor's model-free converter for a preset scheme (compressed-tensors' PRESET_SCHEMES)."""
    from llmcompressor.entrypoints.model_free.converter import ModelFreePtqConverter
    from llmcompressor.entrypoints.model_free.validate import validate_config

    from quantkit.libs import quiet_llmcompressor

    quiet_llmcompressor()
    return ModelFreePtqConverter(validate_config(None, scheme, list(IGNORE)))


def _meta(shape, dtype: str) -> torch.Tensor:
    return torch.empty(shape, dtype=DTYPES[dtype][0], device="meta")


@dataclass
class Layout:
    """Which tensors are quantized, in which sets, and where each set's outputs are written."""

    targets: set[str]  # every quantized weight
    sets: dict[str, tuple[str, ...]]  # weight -> the members of its set (itself alone unless fused)
    last: dict[str, str]  # weight -> the member after which its set is written (file order, shard order)

    @property
    def set_count(self) -> int:
        return len(set(self.sets.values()))


def layout(source: Source, conv) -> Layout:
    """The library's own selection (match_quantizable_tensors) and fused sets (get_fused_names), over
    meta tensors named and shaped as the source's."""
    from compressed_tensors.utils import match_quantizable_tensors
    from llmcompressor.entrypoints.model_free.microscale import get_fused_names, has_microscale_scheme

    order = [(i, t.name) for i, f in enumerate(source.weight_files) for t in source.headers[f.name].ordered()]
    position = {name: k for k, (_, name) in enumerate(order)}
    infos = {t.name: t for h in source.headers.values() for t in h.tensors.values()}
    metas = {name: _meta(infos[name].shape, infos[name].dtype) for _, name in order}
    cfg = conv.config
    targets = set()
    for scheme in cfg.config_groups.values():
        targets |= {name for _, name in match_quantizable_tensors(metas, cfg.ignore, scheme.targets)}
    sets = {name: (name,) for name in targets}
    if has_microscale_scheme(cfg):
        fused, _ = get_fused_names(sorted(targets))
        for matched in fused:
            members = tuple(sorted((n for n in matched.values() if n is not None and n in targets), key=position.get))
            for n in members:
                sets[n] = members
    last = {name: max(members, key=position.get) for name, members in sets.items()}
    return Layout(targets, sets, last)


def check(source: Source, scheme: str) -> None:
    """Every selected tensor can take the scheme (shapes divisible by its groups or blocks), before any work;
    raises ValueError with the library's reason."""
    from llmcompressor.entrypoints.model_free.lifecycle import validate_weight_for_quantization

    conv = converter(scheme)
    plan = layout(source, conv)
    infos = {t.name: t for h in source.headers.values() for t in h.tensors.values()}
    bad = [n for n in sorted(plan.targets) if len(infos[n].shape) != 2 or infos[n].dtype not in ("BF16", "F16", "F32")]
    if bad:
        raise ValueError(f"{bad[0]} is a {infos[bad[0]].dtype} tensor of shape {list(infos[bad[0]].shape)}, not a 2-D float weight")
    group = next(iter(conv.config.config_groups.values()))
    for name in sorted(plan.targets):
        validate_weight_for_quantization(_meta(infos[name].shape, infos[name].dtype), group, name)


def _planned(conv, members: dict[str, torch.Tensor]) -> list[PlannedTensor]:
    out = conv.process(dict(members))
    return [PlannedTensor(k, TORCH_TO_ST[v.dtype], tuple(v.shape)) for k, v in out.items()]


def write(source: Source, staging: Path, progress: Progress, scheme: str) -> tuple[dict, dict, dict, int]:
    """Write the quantized shards, the index and config.json into staging.
    Returns (file_hashes, source_hashes, quantization_config, quantized tensor count)."""
    conv = converter(scheme)
    plan = layout(source, conv)
    infos = {t.name: t for h in source.headers.values() for t in h.tensors.values()}
    names = shard_names(len(source.weight_files))
    held: dict[str, torch.Tensor] = {}  # members read, waiting for the last of their set
    weight_map: dict[str, str] = {}
    file_hashes: dict[str, str] = {}
    source_hashes: dict[str, str] = {}
    total = 0
    for src_file, out_name in zip(source.weight_files, names):
        header = source.headers[src_file.name]
        planned: list[PlannedTensor] = []
        for t in header.ordered():
            if t.name not in plan.targets:
                planned.append(PlannedTensor(t.name, t.dtype, t.shape))
            elif plan.last[t.name] == t.name:
                members = plan.sets[t.name]
                planned += _planned(conv, {m: _meta(infos[m].shape, infos[m].dtype) for m in members})
        writer = StreamWriter(staging / out_name, planned, {"format": "pt"})

        def quantize(t, data, writer=writer) -> None:
            held[t.name] = data
            if plan.last[t.name] == t.name:  # the set is complete: quantize it together
                members = {m: held.pop(m) for m in plan.sets[t.name]}
                for k, v in conv.process(members).items():
                    writer.write(k, v.contiguous())

        source_hashes[src_file.name], file_hashes[out_name] = transcribe(header, writer, plan.targets & set(header.tensors), quantize, progress)
        total += sum(p.nbytes for p in planned)
        weight_map.update({p.name: out_name for p in planned})
    output.write_text_atomic(staging / "model.safetensors.index.json", json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
    qconfig = quantization_config(conv)
    config = {**source.config, "quantization_config": qconfig}
    output.write_text_atomic(staging / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    return file_hashes, source_hashes, qconfig, len(plan.targets)


def quantization_config(conv) -> dict:
    """The block model_free_ptq writes into config.json (llmcompressor's save_utils.update_config, fresh)."""
    from compressed_tensors import __version__ as ct_version

    data = conv.update_config(None).model_dump()
    block = {"version": ct_version, "quant_method": "compressed-tensors", "transform_config": {}, **data}
    return json.loads(json.dumps(block))  # enums and dtypes as the JSON file holds them


def result(method: str, scheme: str, hashes: tuple[dict, dict, dict, int], facts: dict) -> BackendResult:
    from quantkit import formats

    file_hashes, source_hashes, qconfig, count = hashes
    fmt = formats.config_format({"quantization_config": qconfig}) or f"compressed-tensors {scheme}"
    group = next(iter(qconfig["config_groups"].values()))
    return BackendResult(
        method=method,
        parameters={"scheme": scheme, **facts, "ignore": IGNORE, "quantized_tensors": count,
                    "weights_args": _args(group.get("weights")), "input_activations_args": _args(group.get("input_activations")),
                    "compression_format": qconfig.get("format")},
        file_hashes=file_hashes, source_hashes=source_hashes, format=fmt)


def _args(a: dict | None) -> dict | None:
    """The quantization arguments that shape the numbers, as the config block holds them."""
    if not a:
        return None
    keep = ("type", "num_bits", "strategy", "group_size", "block_structure", "symmetric", "dynamic", "scale_dtype")
    return {k: a.get(k) for k in keep}

