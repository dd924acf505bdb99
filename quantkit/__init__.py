"""quantkit: one BF16 checkpoint in, every published quantized format out, each one verified."""

__version__ = "0.1.0"
