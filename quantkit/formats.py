"""Format facts as tables: how to recognise each checkpoint format quantkit reads or writes."""
from __future__ import annotations

from quantkit.errors import OptionError

# Tensor-name suffixes that only quantized checkpoints carry -> the format they mean.
QUANTIZED_SUFFIXES = {
    ".qweight": "gptq/awq",
    ".qzeros": "gptq/awq",
    ".g_idx": "gptq",
    ".weight_packed": "compressed-tensors int",
    ".weight_scale": "compressed-tensors",
    ".weight_zero_point": "compressed-tensors",
    ".q_weight": "exl2",
    ".q_scale": "exl2",
    ".q_groups": "exl2",
    ".SCB": "bitsandbytes int8",
    ".absmax": "bitsandbytes 4-bit",
}
# Stored dtypes that no BF16 source uses for a weight.
QUANTIZED_DTYPES = {"F8_E4M3": "fp8", "F8_E5M2": "fp8"}

# config.json quantization_config -> human name of the format, keyed by (quant_method, format).
CONFIG_FORMATS = {
    ("compressed-tensors", "float-quantized"): "compressed-tensors FP8",
    ("compressed-tensors", "pack-quantized"): "compressed-tensors INT4",
    ("compressed-tensors", "int-quantized"): "compressed-tensors INT8",
    ("gptq", None): "gptq",
    ("awq", None): "awq",
    ("exl2", None): "exl2",
    ("fp8", None): "fp8",
}


def quantized_tensor_format(name: str, dtype: str) -> str | None:
    for suffix, fmt in QUANTIZED_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    if name.endswith(".weight") and dtype in QUANTIZED_DTYPES:
        return QUANTIZED_DTYPES[dtype]
    return None


# compressed-tensors schemes by their first config group's weights and input activations:
# (weights type, bits, strategy, input activations quantized) -> the name users know (the preset's).
CT_SCHEMES = {
    ("float", 8, "block", True): "FP8-block",
    ("float", 4, "tensor_group", False): "NVFP4A16",
    ("float", 4, "tensor_group", True): "NVFP4",
    ("float", 4, "group", False): "MXFP4A16",
    ("float", 4, "group", True): "MXFP4",
    ("int", 8, "group", False): "INT8 W8A16",
    ("int", 8, "channel", False): "INT8 W8A16",
    ("int", 8, "channel", True): "INT8 W8A8",
}


def config_format(config: dict) -> str | None:
    """The quantized format a config.json declares, or None for a plain checkpoint."""
    qc = config.get("quantization_config")
    if not qc:
        return None
    method = qc.get("quant_method")
    fmt = qc.get("format")
    if method == "compressed-tensors":
        groups = list((qc.get("config_groups") or {}).values())
        w = (groups[0].get("weights") or {}) if groups and isinstance(groups[0], dict) else {}
        key = (w.get("type"), w.get("num_bits"), w.get("strategy"), bool(groups[0].get("input_activations")) if groups else False)
        if key in CT_SCHEMES:
            return f"compressed-tensors {CT_SCHEMES[key]}"
    return CONFIG_FORMATS.get((method, fmt)) or CONFIG_FORMATS.get((method, None)) or f"{method} ({fmt})"

MIN_GROUP = 32  # smallest INT4 group size quantkit falls back to


def group_size_for(in_features: list[int], requested: int) -> int:
    """The requested size if it divides every in-features, else the largest power of two
    below it (down to 32) that does: the group sizes INT4 kernels take (vLLM's Marlin: 32, 64, 128)."""
    candidates = [requested] + [g for g in (512, 256, 128, 64, 32) if MIN_GROUP <= g < requested]
    for g in candidates:
        if all(n % g == 0 for n in in_features):
            return g
    raise OptionError("group_size", requested,
                      f"no group size between {MIN_GROUP} and {requested} divides every layer's input size "
                      f"({sorted(set(in_features))}); pass a {{group_size}} that divides them")
