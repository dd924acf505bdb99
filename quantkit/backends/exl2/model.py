"""One decoder layer at a time: the source's own transformers modules, weights read on demand.

The model is built on the meta device (no memory); a layer gets its weights
from the safetensors shards only while it is being measured or quantized, and
is returned to meta afterwards. Attention and MLP are run as exllamav2's
modules are: each block includes its norm and its residual add, so a block's
output is the hidden state after it. Inputs of every Linear are seen through
forward pre-hooks, which feed the Hessians.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from quantkit.source import Source
from quantkit.stio import read_tensor


class SourceModel:
    def __init__(self, source: Source, device: torch.device):
        from transformers import AutoConfig, AutoModelForCausalLM

        from quantkit.libs import quiet_transformers

        quiet_transformers()
        self.source = source
        self.device = device
        self.config = AutoConfig.from_pretrained(source.path)
        self.config._attn_implementation = "sdpa"
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(self.config, dtype=torch.float32)
        self.rotary = type(self.model.model.rotary_emb)(config=self.config).to(device)
        self.where = {name: h for h in source.headers.values() for name in h.tensors}
        self.num_layers = self.config.num_hidden_layers

    # weights ---------------------------------------------------------------

    def tensor(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return read_tensor(self.where[name], name).to(self.device, dtype)

    def has(self, name: str) -> bool:
        return name in self.where

    def layer_names(self, i: int) -> list[str]:
        prefix = f"model.layers.{i}."
        return [n for n in self.where if n.startswith(prefix)]

    @contextlib.contextmanager
    def layer(self, i: int) -> Iterator[nn.Module]:
        """Decoder layer i with its weights loaded (float32); back to meta afterwards."""
        mod = self.model.model.layers[i]
        prefix = f"model.layers.{i}."
        state = {n[len(prefix):]: self.tensor(n) for n in self.layer_names(i)}
        mod.load_state_dict(state, strict=True, assign=True)
        try:
            yield mod
        finally:
            mod.to_empty(device="meta")

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        w = read_tensor(self.where["model.embed_tokens.weight"], "model.embed_tokens.weight")
        return w[ids].to(self.device, torch.float32)

    def final_norm(self) -> nn.Module:
        norm = type(self.model.model.norm)(self.config.hidden_size, eps=self.config.rms_norm_eps)
        norm.weight.data = self.tensor("model.norm.weight")
        return norm.to(self.device)

    def head_weight(self) -> torch.Tensor:
        name = "model.embed_tokens.weight" if getattr(self.config, "tie_word_embeddings", False) or not self.has("lm_head.weight") else "lm_head.weight"
        return self.tensor(name)

    def positions(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.zeros(1, length, 1, device=self.device)
        return self.rotary(x, torch.arange(length, device=self.device)[None])


# blocks ----------------------------------------------------------------------

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def linears(layer: nn.Module, block: str) -> dict[str, nn.Linear]:
    parent = layer.self_attn if block == "self_attn" else layer.mlp
    return {n: getattr(parent, n) for n in (ATTN if block == "self_attn" else MLP)}


def block_forward(layer: nn.Module, block: str, x: torch.Tensor, pos) -> torch.Tensor:
    """The block's output hidden state: x + attn(norm(x)) or x + mlp(norm(x))."""
    if block == "self_attn":
        h, _ = layer.self_attn(hidden_states=layer.input_layernorm(x), position_embeddings=pos, attention_mask=None)
        return x + h
    return x + layer.mlp(layer.post_attention_layernorm(x))


@contextlib.contextmanager
def watch_inputs(mods: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Call fn(name, input) whenever one of mods runs."""
    handles = [m.register_forward_pre_hook(lambda _m, args, _n=n: fn(_n, args[0])) for n, m in mods.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def swapped_weights(mods: dict[str, nn.Linear], weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Run with some Linears' weights replaced (e.g. by quantized candidates)."""
    saved = {n: mods[n].weight.data for n in weights}
    try:
        for n, w in weights.items():
            mods[n].weight.data = w
        yield
    finally:
        for n, w in saved.items():
            mods[n].weight.data = w


def device() -> torch.device:
    """CUDA when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
