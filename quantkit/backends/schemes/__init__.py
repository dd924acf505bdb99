"""compressed-tensors schemes beyond FP8-dynamic and INT4: NVFP4, MXFP4, INT8 and FP8-block."""
from quantkit.backends.schemes.backend import INT8, MXFP4, NVFP4, INT8Options, MXFP4Options, NVFP4Options, SchemeBackend

__all__ = ["INT8", "MXFP4", "NVFP4", "INT8Options", "MXFP4Options", "NVFP4Options", "SchemeBackend"]
