"""FP8-dynamic in compressed-tensors format."""
from quantkit.backends.fp8.backend import FP8Dynamic, FP8Options

__all__ = ["FP8Dynamic", "FP8Options"]
