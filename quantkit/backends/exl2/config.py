"""config.json of an EXL2 folder: the source's, plus exllamav2's quantization_config."""
from __future__ import annotations

from pathlib import Path

from quantkit import __version__, output
from quantkit.source import Source

FORMAT_VERSION = "0.3.2"  # the exllamav2 release whose reader this layout is checked against
FORMAT = f"exl2 (exllamav2 {FORMAT_VERSION} layout)"  # what `inspect` and the manifest call it


def write_config(source: Source, staging: Path, *, bits: float, head_bits: int, rows: int, length: int,
                 dataset: str, achieved: float) -> None:
    """The source's config.json plus exllamav2's quantization_config. Keys exllamav2 reads
    only in their transformers 4 names (rope_theta, rope_scaling) are added when the
    source has only transformers 5's rope_parameters."""
    from quantkit.arch import rope

    cfg = dict(source.config)
    theta, scaling = rope(cfg)
    cfg.setdefault("rope_theta", theta)
    if scaling and "rope_scaling" not in cfg:
        cfg["rope_scaling"] = {k: v for k, v in scaling.items() if k != "rope_theta"}
    cfg["quantization_config"] = {
        "quant_method": "exl2", "version": FORMAT_VERSION, "bits": bits, "head_bits": head_bits,
        "calibration": {"rows": rows, "length": length, "dataset": dataset},
        "quantizer": f"quantkit {__version__}", "bpw_achieved": round(achieved, 4),
    }
    output.write_json(staging / "config.json", cfg)
