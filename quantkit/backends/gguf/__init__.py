"""GGUF as llama.cpp and Ollama load it: quantkit's own converter and encoders (backend.py)."""
from quantkit.backends.gguf.backend import GGUF, GGUFOptions, GGUFPlan
from quantkit.backends.gguf.tensors import predicted_bytes, tensor_types

__all__ = ["GGUF", "GGUFOptions", "GGUFPlan", "predicted_bytes", "tensor_types"]
