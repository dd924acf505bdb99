"""EXL2 as exllamav2 0.3.2 loads it, written by quantkit's own encoder (torch; CPU or CUDA).

exllamav2 imports only with CUDA and is archived, so its converter cannot run
here; this package does the same job in the same steps (exllamav2's
conversion/measure.py, optimize.py, quantize.py, compile.py):

1. calibration rows from the calibration text (`measurement_rows` x
   `measurement_length` tokens for measuring, `rows` x `length` for quantizing);
2. measurement (skipped with --measurement): hidden states flow through the
   unquantized model one decoder layer at a time; for each attention and MLP
   block every candidate bit mix (qparams.py) is quantized with GPTQ and scored
   by the block output's relative error; written as measurement.json;
3. optimisation (optimize.py): one candidate per block, achieved bpw at most
   the target, counted as exllamav2 counts it (all storage bits of the decoder
   Linears over their weights; head excluded);
4. quantization: the same GPTQ with the chosen mixes while hidden states now
   flow through the already quantized layers; the head gets --head-bits;
5. packing (pack.py) into output.safetensors (or output-0000i-of-0000N shards)
   in exllamav2's order, config.json with the exl2 quantization_config.

Memory holds one decoder layer, its candidate weights and the calibration states.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from quantkit import __version__, output
from quantkit.backends.base import BackendResult, Progress
from quantkit.backends.exl2 import pack
from quantkit.backends.exl2.model import SourceModel, block_forward, linears, swapped_weights, watch_inputs
from quantkit.backends.exl2.optimize import optimize
from quantkit.backends.exl2.qparams import (ATTN_CANDIDATES, ATTN_LINEARS, HEAD_OPTIONS, MLP_CANDIDATES, MLP_LINEARS,
                                            QParams, unique_per_linear)
from quantkit.backends.exl2.quant import Hessian, gptq, prepare
from quantkit.errors import InputError
from quantkit.source import Source
from quantkit.stio import PlannedTensor, StreamWriter

FORMAT_VERSION = "0.3.2"  # the exllamav2 release whose reader this layout is checked against
SHARD_MB = 8192  # exllamav2's default --shard_size
BLOCKS = {"self_attn": ATTN_CANDIDATES, "mlp": MLP_CANDIDATES}
# Which Linear's input feeds which Hessian, and which Linears share it (exllamav2's reuse_h).
HESSIAN_OF = {"q_proj": "q_proj", "k_proj": "q_proj", "v_proj": "q_proj", "o_proj": "o_proj",
              "gate_proj": "up_proj", "up_proj": "up_proj", "down_proj": "down_proj"}
MEASUREMENT = "measurement.json"
LINEARS = {"self_attn": ATTN_LINEARS, "mlp": MLP_LINEARS}
# What the optimiser minimises, per block and candidate (both are measured and kept in measurement.json):
OBJECTIVES = {
    "delta": "error relative to what the block adds to the residual stream, ||y - ref|| / ||ref - x|| (quantkit)",
    "output": "error relative to the block's output, residual included, ||y - ref|| / ||ref|| (exllamav2's 1 - accuracy)",
}


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class EXL2:
    name = "exl2"
    format = f"exl2 (exllamav2 {FORMAT_VERSION} layout)"

    def __init__(self, bpw: float = 4.125, head_bits: int = 6, measurement: str | None = None,
                 calibration: str | None = None, rows: int = 100, length: int = 2048,
                 measurement_rows: int = 16, measurement_length: int = 2048, shard_mb: int = SHARD_MB,
                 objective: str = "delta"):
        if objective not in OBJECTIVES:
            raise InputError(f"--objective {objective}: choose {' or '.join(OBJECTIVES)}")
        self.objective = objective
        if head_bits not in HEAD_OPTIONS:
            raise InputError(f"--head-bits {head_bits}: choose one of {', '.join(map(str, HEAD_OPTIONS))} (exllamav2's head options)")
        self.bpw, self.head_bits = float(bpw), head_bits
        self.measurement_file = Path(measurement).expanduser() if measurement else None
        self.calibration = calibration
        self.rows, self.length = rows, length
        self.m_rows, self.m_length = measurement_rows, measurement_length
        self.shard_bytes = shard_mb * 1024**2

    @property
    def suffix(self) -> str:
        return f"exl2-{self.bpw:g}bpw-h{self.head_bits}"

    # before any work ------------------------------------------------------------

    def estimate_bytes(self, source: Source) -> int:
        return int(source.weight_bytes * max(self.bpw, self.head_bits) / 16) + (64 << 20)

    def check(self, source: Source) -> list[str]:
        self.shapes = _linear_shapes(source)
        bad = sorted({f"{i}x{o}" for _, _, (o, i) in self.shapes if i % 32 or o % 32})
        if bad:
            raise InputError(f"EXL2 needs Linear sizes that are multiples of 32; this model has {', '.join(bad)}")
        self.numel = sum(o * i for _, _, (o, i) in self.shapes)
        lo, hi = self._bpw_range()
        if not lo <= self.bpw <= hi:
            raise InputError(f"--bpw {self.bpw:g}: this model's EXL2 mixes span {lo:.2f} to {hi:.2f} bits per weight; choose a target in that range")
        self.measurement = self._read_measurement() if self.measurement_file else None
        notices = []
        maxpos = source.config.get("max_position_embeddings")
        if maxpos and max(self.length, self.m_length) > maxpos:  # as exllamav2's convert.py limits them
            self.length, self.m_length = min(self.length, maxpos), min(self.m_length, maxpos)
            notices.append(f"calibration rows shortened to the model's context, {maxpos} tokens")
        self.text, self.text_desc = _calibration_text(self.calibration)
        tok = _tokenizer(source)
        self.ids = _rows(tok, self.text, self.rows, self.length)
        self.m_ids = None if self.measurement else _rows(tok, self.text, self.m_rows, self.m_length)
        if self.measurement:
            notices.append(f"reusing measurement {self.measurement_file}: skipping the measurement pass")
            if self.objective == "delta" and not all("delta_error" in o for v in self.measurement.values() for o in v):
                notices.append("that measurement has no delta errors (written by exllamav2?): optimising on its output errors")
        if _device().type == "cpu":
            notices.append("no CUDA: quantizing on CPU (float32); expect minutes per layer on large models")
        return notices

    def _block_shapes(self, layer: int, block: str) -> dict[str, tuple[int, int]]:
        """linear name -> (out, in) for one block, in the candidate tables' order."""
        shapes = {n.split(".")[1]: s for lay, n, s in self.shapes if lay == layer and n.startswith(block + ".")}
        return {n: shapes[n] for n in LINEARS[block]}

    def _bits(self, layer: int, block: str, qps) -> int:
        return sum(qp.total_bits(i, o) for qp, (o, i) in zip(qps, self._block_shapes(layer, block).values()))

    def _bpw_range(self) -> tuple[float, float]:
        lo = hi = 0
        for layer in range(self._layers()):
            for block, cands in BLOCKS.items():
                bits = [self._bits(layer, block, row) for row in cands]
                lo, hi = lo + min(bits), hi + max(bits)
        return lo / self.numel, hi / self.numel

    def _layers(self) -> int:
        return 1 + max(layer for layer, _, _ in self.shapes)

    def _read_measurement(self) -> dict:
        f = self.measurement_file
        try:
            data = json.loads(f.read_text())["measurement"]
        except FileNotFoundError:
            raise InputError(f"--measurement {f}: no such file; pass the measurement.json of an earlier exl2 run") from None
        except OSError as e:
            raise InputError(f"--measurement {f}: cannot read it ({e.strerror}); pass the measurement.json of an earlier exl2 run") from None
        except (ValueError, KeyError, TypeError):
            raise InputError(f"--measurement {f}: not an EXL2 measurement.json (no 'measurement' table); pass one quantkit or exllamav2 wrote") from None
        for layer in range(self._layers()):
            for block in BLOCKS:
                key = f"model.layers.{layer}.{block}"
                opts = data.get(key) if isinstance(data, dict) else None
                try:
                    ok = bool(opts) and all(
                        int(o["total_bits"]) == self._bits(layer, block, [QParams.from_dict(o[n]) for n in LINEARS[block]])
                        and 0 < float(o["accuracy"]) <= 1 for o in opts)
                except (KeyError, TypeError, ValueError, AttributeError):
                    ok = False
                if not ok:
                    raise InputError(f"--measurement {f}: {key} does not match this model's shapes; "
                                     "it was measured on another model, so run without --measurement")
        return data

    # the work -----------------------------------------------------------------------

    def run(self, source: Source, staging: Path, progress: Progress) -> BackendResult:
        t0 = time.perf_counter()
        model = SourceModel(source, _device())
        layers = model.num_layers
        steps = layers * (1 if self.measurement else 2) + 1
        per_step = source.weight_bytes // steps
        timings = {}
        if self.measurement is None:
            self.measurement = measure(model, self.m_ids, lambda: progress(per_step))
            timings["measure_s"] = round(time.perf_counter() - t0, 3)
        _write_measurement(staging / MEASUREMENT, self.measurement, layers)
        strategy, achieved, slots_info = self._optimize(layers)
        t1 = time.perf_counter()
        head_qp = HEAD_OPTIONS[self.head_bits]
        plan = _plan(model, strategy, head_qp)
        writer = ShardWriter(staging, plan, self.shard_bytes)
        try:
            errors = quantize(model, self.ids, strategy, head_qp, writer, lambda: progress(per_step))
            hashes = writer.close()
        except BaseException:
            writer.abort()
            raise
        timings["quantize_s"] = round(time.perf_counter() - t1, 3)
        progress(source.weight_bytes - per_step * (steps - 1))
        _write_config(source, staging, self, achieved)
        head_bits = head_qp.total_bits(*_head_shape(model)[::-1]) / math.prod(_head_shape(model))
        params = {
            "bits": self.bpw, "head_bits": self.head_bits, "bpw_achieved": round(achieved, 4),
            "head_bpw": round(head_bits, 4), "counted_as": "exllamav2: storage bits of decoder Linears / their weights",
            "calibration": {"text": self.text_desc, "rows": self.rows, "length": self.length,
                            "measurement_rows": None if self.measurement_file else self.m_rows,
                            "measurement_length": None if self.measurement_file else self.m_length},
            "measurement": str(self.measurement_file) if self.measurement_file else MEASUREMENT,
            "device": str(_device()), "timings": timings,
            "objective": self.used_objective,
            "strategy": {k: {"bpw": v["bpw"], "expected_error": v["error"], "rfn_error": errors.get(k)}
                         for k, v in slots_info.items()},
        }
        return BackendResult(method="exl2", parameters=params, file_hashes=hashes, format=self.format)

    def _optimize(self, layers: int) -> tuple[dict, float, dict]:
        slots, keys = [], []
        has_delta = all("delta_error" in o for v in self.measurement.values() for o in v)
        self.used_objective = "delta" if self.objective == "delta" and has_delta else "output"
        for layer in range(layers):
            for block in BLOCKS:
                key = f"model.layers.{layer}.{block}"
                slots.append([(int(o["total_bits"]), float(o["delta_error"]) if self.used_objective == "delta"
                               else 1 - float(o["accuracy"])) for o in self.measurement[key]])
                keys.append(key)
        budget = int(self.numel * self.bpw)
        choice = optimize(slots, budget)
        strategy, info = {}, {}
        for key, slot, j in zip(keys, slots, choice.picks):
            opt = self.measurement[key][j]
            layer, block = int(key.split(".")[2]), key.rsplit(".", 1)[1]
            strategy[key] = {n: QParams.from_dict(opt[n]) for n in LINEARS[block]}
            numel = sum(o * i for o, i in self._block_shapes(layer, block).values())
            info[key] = {"bpw": round(slot[j][0] / numel, 4), "error": round(slot[j][1], 8)}
        return strategy, choice.bits / self.numel, info


# measurement ---------------------------------------------------------------------------


def _block_hessians(layer, block: str, states: list[torch.Tensor], pos, device) -> tuple[list[torch.Tensor], dict[str, Hessian]]:
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


def measure(model: SourceModel, ids: torch.Tensor, step) -> dict:
    """exllamav2's measurement: every candidate of every block, scored on the block output
    (exllamav2's `accuracy`) and on what the block adds (`delta_error`)."""
    states = [model.embed(r[None]) for r in ids]
    pos = model.positions(ids.shape[1])
    result = {}
    for i in range(model.num_layers):
        with model.layer(i) as layer:
            for block, cands in BLOCKS.items():
                targets, hess = _block_hessians(layer, block, states, pos, model.device)
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
        step()
    return result


def _write_measurement(path: Path, measurement: dict, layers: int) -> None:
    output.write_json(path, {"measurement": measurement, "last_module_idx": 2 * layers + 1,
                             "quantkit": {"version": __version__}})


# quantization ----------------------------------------------------------------------------


def quantize(model: SourceModel, ids: torch.Tensor, strategy: dict, head_qp: QParams, writer: "ShardWriter", step) -> dict:
    """The quantization pass; writes every tensor through `writer` in plan order. Returns each block's rfn error."""
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
            for block, norm in (("self_attn", "input_layernorm"), ("mlp", "post_attention_layernorm")):
                writer.write(f"{prefix}.{norm}.weight", getattr(layer, norm).weight.data.half().cpu())
                targets, hess = _block_hessians(layer, block, states, pos, model.device)
                prepared = {n: prepare(h) for n, h in hess.items()}
                del hess
                lins = linears(layer, block)
                for n, lin in lins.items():
                    qz = gptq(lin.weight.data, prepared[HESSIAN_OF[n]], strategy[f"{prefix}.{block}"][n])
                    _write_linear(writer, f"{prefix}.{block}.{n}", qz, lin.bias)
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
    _write_linear(writer, "lm_head", qz, None)
    return errors


def _write_linear(writer: "ShardWriter", key: str, qz, bias) -> None:
    t = pack.pack_linear(qz.q.cpu(), qz.groups, qz.code.cpu(), qz.scale_max.cpu(), qz.invperm.cpu(),
                         None if bias is None else bias.data.half().cpu())
    for suffix in LINEAR_TENSORS:
        if suffix in t:
            writer.write(f"{key}.{suffix}", t[suffix])


LINEAR_TENSORS = ("q_weight", "q_invperm", "q_scale", "q_scale_max", "q_groups", "bias")


def _linear_plan(key: str, out: int, inp: int, qp: QParams, bias: bool) -> list[PlannedTensor]:
    groups = qp.groups(inp)
    packed_rows = sum(r * b // 32 for b, r in groups)
    g = len(groups)
    shapes = {"q_weight": ("I32", (packed_rows, out)), "q_invperm": ("I32", (inp,)), "q_scale": ("I32", (g, out // 8)),
              "q_scale_max": ("F16", (g,)), "q_groups": ("I16", (2 * g,)), "bias": ("F16", (out,))}
    return [PlannedTensor(f"{key}.{s}", *shapes[s]) for s in LINEAR_TENSORS if s != "bias" or bias]


def _head_shape(model: SourceModel) -> tuple[int, int]:
    return (model.config.vocab_size, model.config.hidden_size)


def _plan(model: SourceModel, strategy: dict, head_qp: QParams) -> list[PlannedTensor]:
    """Every output tensor in exllamav2's compile order."""
    h = model.config.hidden_size
    plan = [PlannedTensor("model.embed_tokens.weight", "F16", (model.config.vocab_size, h))]
    for i in range(model.num_layers):
        prefix = f"model.layers.{i}"
        for block, norm in (("self_attn", "input_layernorm"), ("mlp", "post_attention_layernorm")):
            plan.append(PlannedTensor(f"{prefix}.{norm}.weight", "F16", (h,)))
            for n, qp in strategy[f"{prefix}.{block}"].items():
                key = f"{prefix}.{block}.{n}"
                out, inp = model.where[key + ".weight"].tensors[key + ".weight"].shape
                plan += _linear_plan(key, out, inp, qp, model.has(key + ".bias"))
    plan.append(PlannedTensor("model.norm.weight", "F16", (h,)))
    plan += _linear_plan("lm_head", model.config.vocab_size, h, head_qp, False)
    return plan


class ShardWriter:
    """output.safetensors, or output-0000i-of-0000N.safetensors when over the shard size;
    tensors arrive in plan order and go straight to disk."""

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
        self._close_current()
        return self.hashes

    def abort(self) -> None:
        if self.current is not None:
            self.current.abort()


# source facts ---------------------------------------------------------------------------


def _linear_shapes(source: Source) -> list[tuple[int, str, tuple[int, int]]]:
    """(layer, 'block.linear', (out, in)) for every decoder Linear."""
    out = []
    for h in source.headers.values():
        for name, t in h.tensors.items():
            parts = name.split(".")
            if len(parts) == 6 and parts[0] == "model" and parts[1] == "layers" and parts[5] == "weight" \
                    and parts[3] in BLOCKS:
                out.append((int(parts[2]), f"{parts[3]}.{parts[4]}", tuple(t.shape)))
    return sorted(out)


def _calibration_text(spec: str | None) -> tuple[str, str]:
    from quantkit.text import load_text

    return load_text(spec, "calibration")


def _tokenizer(source: Source):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source.path)


def _rows(tok, text: str, rows: int, length: int) -> torch.Tensor:
    from quantkit.text import token_rows

    return torch.tensor(token_rows(tok, text, rows, length, "fewer --rows / a shorter --length"), dtype=torch.long)


def _write_config(source: Source, staging: Path, b: EXL2, achieved: float) -> None:
    """The source's config.json plus exllamav2's quantization_config. Keys exllamav2 reads
    only in their transformers 4 names (rope_theta, rope_scaling) are added when the
    source has only transformers 5's rope_parameters."""
    from quantkit.backends.gguf.convert import rope

    cfg = dict(source.config)
    theta, scaling = rope(cfg)
    cfg.setdefault("rope_theta", theta)
    if scaling and "rope_scaling" not in cfg:
        cfg["rope_scaling"] = {k: v for k, v in scaling.items() if k != "rope_theta"}
    cfg["quantization_config"] = {
        "quant_method": "exl2", "version": FORMAT_VERSION, "bits": b.bpw, "head_bits": b.head_bits,
        "calibration": {"rows": b.rows, "length": b.length, "dataset": b.text_desc},
        "quantizer": f"quantkit {__version__}", "bpw_achieved": round(achieved, 4),
    }
    output.write_json(staging / "config.json", cfg)
