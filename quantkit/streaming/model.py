"""One decoder layer at a time: the model's own transformers modules, weights read on demand.

The model is built on the meta device (no memory); a layer gets its weights from its reader
(streaming/weights.py) only while it runs, and is returned to meta afterwards. Attention and
MLP run as blocks that include their norm and residual add (as exllamav2's modules do), so a
block's output is the hidden state after it, and a decoder layer is its two blocks. Inputs of
every Linear can be watched through forward pre-hooks (Hessians, importance matrices), and a
reader's input treatment (FP8's dynamic activation quantization) is installed the same way.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from quantkit.errors import InputError
from quantkit.streaming.weights import Weights

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
EMBED = "model.embed_tokens.weight"


class LayerModel:
    """A causal LM from `config` (a transformers config) whose weights come from `weights`."""

    def __init__(self, weights: Weights, config, device: torch.device, keep_head: bool = False):
        from transformers import AutoModelForCausalLM

        from quantkit.libs import quiet_transformers

        quiet_transformers()
        self.weights = weights
        self.device = torch.device(device)
        self.config = config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        if keep_head and getattr(config, "tie_word_embeddings", False) and "lm_head.weight" in weights.names:
            config.tie_word_embeddings = False  # exllamav2 reads a stored head before the embeddings
        config._attn_implementation = "sdpa"
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        self.rotary = type(self.model.model.rotary_emb)(config=config).to(self.device)
        self.num_layers = config.num_hidden_layers
        self.vocab_size = config.vocab_size
        self._check_names()

    def _check_names(self) -> None:
        expected = set(self.model.state_dict())
        tied = set((getattr(self.model, "all_tied_weights_keys", None) or {}))
        have = self.weights.names
        missing = sorted(expected - have - tied)
        extra = sorted(have - expected)
        if missing or extra:
            raise InputError(f"{self.weights.path}: its tensors do not match the model its config describes "
                             f"(missing {missing[:3]}, unexpected {extra[:3]})")

    # weights ---------------------------------------------------------------

    def tensor(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.weights.tensor(name).to(self.device, dtype)

    def has(self, name: str) -> bool:
        return name in self.weights.names

    def shape(self, name: str) -> tuple[int, ...]:
        return self.weights.shape(name)

    def layer_names(self, i: int) -> list[str]:
        prefix = f"model.layers.{i}."
        return sorted(n for n in self.weights.names if n.startswith(prefix))

    @contextlib.contextmanager
    def layer(self, i: int) -> Iterator[nn.Module]:
        """Decoder layer i with its weights loaded (float32) and the reader's input treatment; back to meta afterwards."""
        mod = self.model.model.layers[i]
        prefix = f"model.layers.{i}."
        state = {n[len(prefix):]: self.tensor(n) for n in self.layer_names(i)}
        mod.load_state_dict(state, strict=True, assign=True)
        del state
        handles = []
        for name, sub in mod.named_modules():
            hook = self.weights.input_hook(prefix + name) if isinstance(sub, nn.Linear) else None
            if hook is not None:
                handles.append(sub.register_forward_pre_hook(hook))
        try:
            yield mod
        finally:
            for h in handles:
                h.remove()
            mod.to_empty(device="meta")

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of token ids (any shape), float32: the table is read once, as stored, and indexed."""
        return self.weights.raw(EMBED)[ids].to(self.device, torch.float32)

    def final_norm(self) -> nn.Module:
        norm = type(self.model.model.norm)(self.config.hidden_size, eps=self.config.rms_norm_eps)
        norm.weight.data = self.tensor("model.norm.weight")
        return norm.to(self.device)

    def head_name(self) -> str:
        tied = getattr(self.config, "tie_word_embeddings", False)
        return EMBED if tied or not self.has("lm_head.weight") else "lm_head.weight"

    def head_weight(self) -> torch.Tensor:
        return self.tensor(self.head_name())

    def head_hook(self) -> Callable | None:
        return self.weights.input_hook("lm_head") if self.head_name() == "lm_head.weight" else None

    def positions(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.zeros(1, length, 1, device=self.device)
        return self.rotary(x, torch.arange(length, device=self.device)[None])


# blocks ----------------------------------------------------------------------

def linears(layer: nn.Module, block: str) -> dict[str, nn.Linear]:
    parent = layer.self_attn if block == "self_attn" else layer.mlp
    return {n: getattr(parent, n) for n in (ATTN if block == "self_attn" else MLP)}


def block_forward(layer: nn.Module, block: str, x: torch.Tensor, pos) -> torch.Tensor:
    """The block's output hidden state: x + attn(norm(x)) or x + mlp(norm(x))."""
    if block == "self_attn":
        h, _ = layer.self_attn(hidden_states=layer.input_layernorm(x), position_embeddings=pos, attention_mask=None)
        return x + h
    return x + layer.mlp(layer.post_attention_layernorm(x))


def layer_forward(layer: nn.Module, x: torch.Tensor, pos) -> torch.Tensor:
    """A whole decoder layer: attention block then MLP block."""
    return block_forward(layer, "mlp", block_forward(layer, "self_attn", x, pos), pos)


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


def device(requested: str = "auto") -> torch.device:
    """CUDA when there is one (or asked for), else the CPU."""
    if requested == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(requested)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {requested}: choose auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device {requested}: choose auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {requested}: torch sees no CUDA GPU here; use --device cpu (or auto)")
    return dev
