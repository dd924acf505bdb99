"""INT4 weight-only (W4A16): GPTQ and AWQ through llm-compressor."""
from quantkit.backends.int4.backend import AWQ, GPTQ, RTN, AWQOptions, GPTQOptions, INT4Options

__all__ = ["AWQ", "GPTQ", "RTN", "AWQOptions", "GPTQOptions", "INT4Options"]
