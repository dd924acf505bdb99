"""Any model quantkit reads, run one decoder layer at a time (verify, imatrix, EXL2)."""
from quantkit.streaming.model import (LayerModel, block_forward, device, layer_forward, linears, swapped_weights,
                                      watch_inputs)
from quantkit.streaming.open import from_source, open_model
from quantkit.streaming.resume import Checkpoint, source_key
from quantkit.streaming.states import States

__all__ = ["Checkpoint", "LayerModel", "States", "block_forward", "device", "from_source", "layer_forward", "linears",
           "open_model", "source_key", "swapped_weights", "watch_inputs"]
