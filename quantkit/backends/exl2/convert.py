"""`run` of the exl2 backend: measure (unless reused), choose the mixes, quantize, write the folder."""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from quantkit.backends.base import BackendResult, Progress
from quantkit.backends.exl2.config import FORMAT, write_config
from quantkit.backends.exl2.layout import tensor_plan
from quantkit.backends.exl2.measure import measure
from quantkit.backends.exl2.measurement_file import MEASUREMENT, write_measurement
from quantkit.streaming import Checkpoint, from_source, source_key
from quantkit.backends.exl2.qparams import HEAD_OPTIONS
from quantkit.backends.exl2.quantize_pass import quantize
from quantkit.backends.exl2.shards import ShardWriter
from quantkit.backends.exl2.strategy import choose

if TYPE_CHECKING:
    from quantkit.backends.exl2.backend import EXL2Options, EXL2Plan


def convert(plan: EXL2Plan, options: EXL2Options, staging: Path, progress: Progress) -> BackendResult:
    """Write output*.safetensors, config.json and measurement.json into staging."""
    source = plan.source
    t0 = time.perf_counter()
    model = from_source(source, torch.device(plan.device))
    layers = model.num_layers
    steps = layers * (1 if plan.measurement else 2) + 1
    per_step = source.weight_bytes // steps
    timings = {}
    measurement = plan.measurement
    if measurement is None:
        checkpoint = Checkpoint("exl2-measurement", {
            "source": source_key(source.path), "ids": hashlib.sha256(plan.measurement_ids.numpy().tobytes()).hexdigest(),
            "device": plan.device, "version": 1})
        measurement = measure(model, plan.measurement_ids, lambda: progress(per_step), checkpoint)
        timings["measure_s"] = round(time.perf_counter() - t0, 3)
    write_measurement(staging / MEASUREMENT, measurement, layers)
    strategy = choose(measurement, plan.shapes, options.bpw, plan.objective)
    t1 = time.perf_counter()
    head_qp = HEAD_OPTIONS[options.head_bits]
    writer = ShardWriter(staging, tensor_plan(model, strategy.mixes, head_qp), options.shard_size * 1024**2)
    try:
        errors = quantize(model, plan.ids, strategy.mixes, head_qp, writer, lambda: progress(per_step))
        hashes = writer.close()
    except BaseException:
        writer.abort()
        raise
    timings["quantize_s"] = round(time.perf_counter() - t1, 3)
    progress(source.weight_bytes - per_step * (steps - 1))
    write_config(source, staging, bits=options.bpw, head_bits=options.head_bits, rows=options.rows,
                 length=plan.length, dataset=plan.calibration_desc, achieved=strategy.bpw_achieved)
    head_shape = (model.config.vocab_size, model.config.hidden_size)
    head_bpw = head_qp.total_bits(*head_shape[::-1]) / math.prod(head_shape)
    reused = plan.measurement_file is not None
    params = {
        "bits": options.bpw, "head_bits": options.head_bits, "bpw_achieved": round(strategy.bpw_achieved, 4),
        "head_bpw": round(head_bpw, 4), "counted_as": "exllamav2: storage bits of decoder Linears / their weights",
        "calibration": {"text": plan.calibration_desc, "rows": options.rows, "length": plan.length,
                        "measurement_rows": None if reused else options.measurement_rows,
                        "measurement_length": None if reused else plan.measurement_length},
        "measurement": str(plan.measurement_file) if reused else MEASUREMENT,
        "device": plan.device, "timings": timings,
        "objective": plan.objective,
        "strategy": {k: {"bpw": v.bpw, "expected_error": v.error, "rfn_error": errors.get(k)}
                     for k, v in strategy.blocks.items()},
    }
    return BackendResult(method="exl2", parameters=params, file_hashes=hashes, format=FORMAT)
