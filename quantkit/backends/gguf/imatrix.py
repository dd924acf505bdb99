"""Importance matrices ("imatrix") as llama.cpp's `llama-imatrix` computes, saves and loads them.

What llama-imatrix collects (tools/imatrix/imatrix.cpp, `collect_imatrix`): for every matrix
multiplication whose weight is named `blk.*` (and `output.weight` with --process-output), per
input column j the sum over evaluated tokens of x_j^2 (x: the F32 activations fed to that
weight), and per matrix one count: the number of tokens summed. Multiplications over fewer
than 16 tokens (a physical batch, "ubatch") are not collected.

How the text is cut (`compute_imatrix`): the whole text is tokenized once with the vocab's
special tokens (BOS if the vocab adds one; special-token text is not parsed); chunk i is tokens
[i*ctx, (i+1)*ctx) with its first token replaced by BOS (when the vocab adds BOS), evaluated on
its own from position 0, and every token of the chunk is collected (but see
collected_positions). At least 2*ctx tokens are needed; at most len(tokens) // ctx chunks are
used. imatrix.chunk_count is the largest count // ctx.

Here the same statistics come from the Hugging Face modules in float32, one decoder layer at a time
(quantkit/streaming, on CUDA when there is one): forward pre-hooks
on each nn.Linear see the same inputs llama.cpp's mul_mat gets (q/k are permuted by their rows
for GGUF, which leaves input-column statistics unchanged).

The file is llama.cpp's GGUF imatrix: `general.type = "imatrix"`, `imatrix.datasets` (strings),
`imatrix.chunk_count` and `imatrix.chunk_size` (u32), and per weight `<name>.in_sum2` (F32,
ne = [n_cols, n_mat]) and `<name>.counts` (F32, ne = [1, n_mat]). The vector handed to the
quantizer for a weight (tools/quantize/quantize.cpp `load_imatrix`) is in_sum2 / count per
matrix, or 1.0 for a matrix whose count is 0.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from quantkit.errors import InputError, OptionsError

if TYPE_CHECKING:
    from quantkit.backends.gguf.vocab import Bos

GENERAL_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUM_SUFFIX = ".in_sum2"
COUNT_SUFFIX = ".counts"

# llama-imatrix's defaults (common.h n_batch / n_ubatch) and the smallest batch it collects
N_BATCH = 2048
N_UBATCH = 512
MIN_TOKENS = 16


@dataclass
class Entry:
    """One weight's statistics: sums of squared inputs per matrix and column, tokens per matrix."""

    sums: np.ndarray  # float32 (n_mat, n_cols); n_mat is 1 except for stacked experts
    counts: np.ndarray  # int64 (n_mat,)


@dataclass
class Imatrix:
    """Statistics per GGUF weight name (`blk.0.attn_q.weight`, ...).

    legacy: loaded from a legacy .dat file, where `sums` hold (sum / count) * ncall and
    `counts` hold [ncall] (llama.cpp's layout, kept as read)."""

    entries: dict[str, Entry]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False
    path: Path | None = None  # the file it was loaded from or last saved to

    @property
    def chunks(self) -> int:
        return self.chunk_count

    @property
    def origin(self) -> str:
        if self.path is not None:
            return str(self.path)
        return self.datasets[0] if self.datasets else "computed"

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def weights(self, name: str) -> np.ndarray | None:
        """The float32 vector llama-quantize passes to ggml_quantize_chunk for this weight
        (n_mat * n_cols values, one slice per matrix), or None when the imatrix has no entry
        (llama.cpp then quantizes that tensor without one)."""
        e = self.entries.get(name)
        if e is None:
            return None
        sums = np.asarray(e.sums, dtype=np.float32).reshape(len(e.counts), -1)
        counts = np.asarray(e.counts)
        if self.legacy:
            n = float(counts[0]) if counts.size else 0.0
            return (sums / np.float32(n) if n > 0 else sums).reshape(-1).astype(np.float32)
        out = np.ones_like(sums)
        for j, c in enumerate(counts):
            if c > 0:
                out[j] = sums[j] / np.float32(c)
        return out.reshape(-1)


# -- computing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """The calibration text and the name the imatrix records for it (imatrix.datasets)."""

    text: str
    dataset: str

    @classmethod
    def load(cls, spec: str | None) -> Calibration:
        """spec: None for the built-in text, a file, or a dataset (quantkit.text.load_text)."""
        from quantkit.text import load_text

        text, described = load_text(spec, "calibration")
        return cls(text, str(spec) if spec is not None else f"quantkit {described}")


def tokenize(tokenizer, text: str, add_bos: bool, bos_id: int | None) -> list[int]:
    """The whole text as llama-imatrix tokenizes it: BOS first when the vocab adds one;
    special-token text in the calibration text is read as plain text (parse_special off)."""
    try:
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    except TypeError:  # a tokenizer without split_special_tokens
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([bos_id] if add_bos else []) + list(ids)


def windows(tokens: list[int], chunks: int | None, ctx: int, add_bos: bool, bos_id: int | None) -> np.ndarray:
    """The token windows llama-imatrix evaluates, shape (n_chunk, ctx)."""
    if ctx < MIN_TOKENS:
        raise InputError(f"imatrix context {ctx}: use at least {MIN_TOKENS} tokens per chunk")
    if chunks is not None and chunks == 0:
        raise InputError("imatrix chunks 0: ask for at least one chunk")
    if len(tokens) < 2 * ctx:
        raise OptionsError(
            f"the calibration text gives {len(tokens)} tokens; llama.cpp's imatrix needs at least 2 x {ctx} = "
            f"{2 * ctx}: pass a longer {{calibration}} or a shorter context"
        )
    n_max = len(tokens) // ctx
    n = n_max if chunks is None or chunks < 0 else min(chunks, n_max)
    out = np.asarray(tokens[: n * ctx], dtype=np.int64).reshape(n, ctx).copy()
    if add_bos:
        out[:, 0] = bos_id
    return out


def collected_positions(n_chunk: int, ctx: int, n_batch: int = N_BATCH, n_ubatch: int = N_UBATCH) -> np.ndarray:
    """Which token positions of each chunk llama-imatrix collects, shape (n_chunk, ctx), bool.

    It decodes n_seq = n_batch // ctx chunks per batch as parallel sequences (one KV stream
    each), and the KV cache splits a batch into physical batches of n_ubatch // n_seq tokens
    from every sequence (llama-batch.cpp split_equal; split_simple when n_seq is 1, same
    result). A physical batch under 16 tokens is not collected. All True for usual contexts."""
    n_seq = max(1, n_batch // ctx)
    n_batch = min(n_batch, n_seq * ctx)
    n_ubatch = min(n_ubatch, n_batch)
    num_batches = -(-ctx // n_batch)
    mask = np.ones((n_chunk, ctx), dtype=bool)
    for i in range(0, n_chunk, n_seq):
        s = min(n_seq, n_chunk - i)
        per_seq = max(1, n_ubatch // s)
        for j in range(num_batches):
            start = j * n_batch
            size = min(ctx - start, n_batch)
            done = 0
            while done < size:
                t = min(per_seq, size - done)
                if t * s < MIN_TOKENS:
                    mask[i:i + s, start + done:start + done + t] = False
                done += t
    return mask


def _name_map(config):
    import gguf

    from quantkit.arch import ARCHITECTURES

    a = ARCHITECTURES.get((getattr(config, "architectures", None) or [""])[0])
    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    return gguf.get_tensor_name_map(by_name[a.gguf_arch] if a else gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)


def compute(model_dir: Path, calibration: Calibration, chunks: int | None, ctx: int = 512,
            progress: Callable[[int], None] | None = None, *, process_output: bool = False,
            bos: Bos | None = None, device: str = "auto") -> Imatrix:
    """llama-imatrix's statistics for a Hugging Face checkpoint, over `chunks` chunks of `ctx`
    tokens of the calibration text. chunks None or negative: all the text gives. process_output:
    also collect output.weight (llama.cpp's --process-output; never for tied embeddings, whose
    output multiplication uses token_embd.weight, which llama.cpp does not collect). bos: whether
    the GGUF's vocab adds BOS, and its id (vocab.add_bos, which it is found with when not given).
    progress(n): n more layers done (the model runs one decoder layer at a time over all chunks,
    quantkit/streaming; hidden states of all chunks are kept, on disk above the states budget)."""
    import torch
    from transformers import AutoTokenizer

    from quantkit import streaming
    from quantkit.backends.gguf import vocab
    from quantkit.libs import quiet_transformers

    model_dir = Path(model_dir)
    quiet_transformers()
    if bos is None:
        bos = vocab.add_bos(model_dir, json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["vocab_size"])
    add_bos, bos_id = bos
    if add_bos and bos_id is None:
        raise InputError(f"{model_dir}: the tokenizer has no BOS token to add")
    tok = AutoTokenizer.from_pretrained(model_dir)
    wins = windows(tokenize(tok, calibration.text, add_bos, bos_id), chunks, ctx, add_bos, bos_id)
    keep = collected_positions(len(wins), ctx)

    model = streaming.open_model(model_dir, streaming.device(device))
    names = _name_map(model.config)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    current: dict = {}

    def collect(gname: str, x: torch.Tensor) -> None:
        if current.get("x") is not x:  # q/k/v and gate/up get the same tensor: square it once
            current["x"] = x  # held, so that no later input can be this object
            x = x.detach().reshape(-1, x.shape[-1])
            m = current["keep"]
            if x.shape[0] != m.numel():
                raise AssertionError(f"{gname}: {x.shape[0]} rows for {m.numel()} tokens")
            x = x[m.to(x.device)].to(torch.float64)
            current["sq"], current["n"] = (x * x).sum(0).cpu(), x.shape[0]
        if gname not in sums:
            sums[gname] = torch.zeros(x.shape[-1], dtype=torch.float64)
            counts[gname] = 0
        sums[gname] += current["sq"]
        counts[gname] += current["n"]

    ids = torch.from_numpy(wins)
    masks = [torch.from_numpy(keep[i]) for i in range(len(wins))]
    pos = model.positions(ids.shape[1]) if len(wins) else None
    checkpoint = streaming.Checkpoint("imatrix", {
        "source": streaming.source_key(model_dir), "windows": hashlib.sha256(wins.tobytes()).hexdigest(),
        "keep": hashlib.sha256(keep.tobytes()).hexdigest(), "version": 1})
    with streaming.States(len(wins), (1, ids.shape[1], model.config.hidden_size), device=model.device) as states:
        start = _resume(checkpoint, states, sums, counts)
        if start is None:
            start = 0
            embedded = model.embed(ids)
            for w in range(len(wins)):
                states[w] = embedded[w][None]
            del embedded
        elif progress is not None:
            progress(start)
        with torch.inference_mode():
            for i in range(start, model.num_layers):
                with model.layer(i) as layer:
                    watched = {}
                    for sub, mod in layer.named_modules():
                        gname = names.get_name(f"model.layers.{i}.{sub}.weight", try_suffixes=(".weight",))
                        if isinstance(mod, torch.nn.Linear) and gname is not None and gname.startswith("blk."):
                            watched[gname] = mod
                    with streaming.watch_inputs(watched, collect):
                        for w in range(len(wins)):
                            current.clear()
                            current["keep"] = masks[w]
                            states[w] = streaming.layer_forward(layer, states[w], pos)
                current.clear()
                if i + 1 < model.num_layers:
                    checkpoint.save(i + 1, {"counts": counts}, {k: v.numpy() for k, v in sums.items()}, states)
                if progress is not None:
                    progress(1)
            if process_output and model.head_name() == "lm_head.weight":
                norm = model.final_norm()
                for w in range(len(wins)):
                    current.clear()
                    current["keep"] = masks[w]
                    collect("output.weight", norm(states[w]))
    checkpoint.clear()
    entries = {n: Entry(sums[n].to(torch.float32).numpy()[None, :].copy(), np.array([counts[n]], dtype=np.int64))
               for n in sorted(sums)}
    max_count = max((int(e.counts.max()) for e in entries.values()), default=0)
    return Imatrix(entries, datasets=[calibration.dataset], chunk_count=max_count // ctx, chunk_size=ctx)


# -- files ---------------------------------------------------------------------------------


def _resume(checkpoint, states, sums: dict, counts: dict) -> int | None:
    """Layers done by a killed run of the same pass (its sums, counts and hidden states restored), or None."""
    import torch

    got = checkpoint.load()
    if got is None or got[3].shape != (len(states), *states.shape):
        return None
    done, meta, arrays, saved = got
    for w in range(len(states)):
        states[w] = torch.from_numpy(np.array(saved[w])).to(states.device)
    sums.update({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    counts.update(meta["counts"])
    return done


def save(imatrix: Imatrix, path: Path) -> Path:
    """Write llama.cpp's GGUF imatrix file (what llama-imatrix writes by default)."""
    import gguf

    if imatrix.legacy:
        raise InputError("this imatrix was read from a legacy .dat file; its raw sums are gone, so it is not saved as GGUF")
    path = Path(path)
    w = gguf.GGUFWriter(path, "imatrix")
    # llama-imatrix writes no general.architecture; gguf-py adds one on construction
    for kv in w.kv_data:
        kv.pop(gguf.Keys.General.ARCHITECTURE, None)
    w.add_string(GENERAL_TYPE, "imatrix")
    w.add_array(KEY_DATASETS, list(imatrix.datasets) or ["unknown"])  # gguf-py drops an empty array
    w.add_uint32(KEY_CHUNK_COUNT, int(imatrix.chunk_count))
    w.add_uint32(KEY_CHUNK_SIZE, int(imatrix.chunk_size))
    for name in sorted(imatrix.entries):
        e = imatrix.entries[name]
        n_mat = len(e.counts)
        if n_mat == 0 or np.asarray(e.sums).size == 0:
            continue
        sums = np.ascontiguousarray(np.asarray(e.sums, dtype=np.float32).reshape(n_mat, -1))
        counts = np.asarray(e.counts, dtype=np.float32).reshape(n_mat, 1)
        w.add_tensor(name + SUM_SUFFIX, sums)  # gguf-py reverses numpy's shape: ne = [n_cols, n_mat]
        w.add_tensor(name + COUNT_SUFFIX, counts)  # ne = [1, n_mat]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    imatrix.path = path
    return path


def load(path: Path) -> Imatrix:
    """Read an imatrix file written by llama-imatrix or by `save`: GGUF, or the legacy .dat."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such imatrix file; pass one written by quantkit or llama-imatrix")
    with open(path, "rb") as f:
        magic = f.read(4)
    imx = _load_gguf(path) if magic == b"GGUF" else _load_legacy(path)
    for name, e in imx.entries.items():
        if not np.all(np.isfinite(e.sums)):
            raise InputError(f"{path}: imatrix entry {name} holds non-finite values; compute the imatrix again")
    imx.path = path
    return imx


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    if hasattr(f, "contents"):
        return f.contents()
    import gguf

    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    v = f.parts[f.data[0]]
    return bytes(v).decode("utf-8") if f.types[0] == gguf.GGUFValueType.STRING else v[0].item()


def _load_gguf(path: Path) -> Imatrix:
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # gguf-py raises ValueError, struct/numpy errors on damaged files
        raise InputError(f"{path}: not a readable GGUF file ({e.__class__.__name__}); pass an imatrix .gguf") from None
    pairs: dict[str, list] = {}
    for t in reader.tensors:
        for suffix, slot in ((SUM_SUFFIX, 0), (COUNT_SUFFIX, 1)):
            if t.name.endswith(suffix):
                pairs.setdefault(t.name[: -len(suffix)], [None, None])[slot] = t
    if not pairs:
        raise InputError(f"{path}: no imatrix entries (no *.in_sum2 / *.counts tensors); is it a model GGUF?")
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in reader.fields]
    if missing:
        raise InputError(f"{path}: missing imatrix metadata {', '.join(missing)}, which llama-quantize requires")
    entries = {}
    for name, (s, c) in sorted(pairs.items()):
        if s is None or c is None:
            raise InputError(f"{path}: imatrix entry {name} has {'counts' if s is None else 'sums'} but no "
                             f"{'sums' if s is None else 'counts'}")
        if s.tensor_type != gguf.GGMLQuantizationType.F32 or c.tensor_type != gguf.GGMLQuantizationType.F32:
            raise InputError(f"{path}: imatrix entry {name} is not F32")
        sums = np.asarray(s.data, dtype=np.float32).reshape(-1)
        cnt = np.asarray(c.data, dtype=np.float32).reshape(-1)
        if cnt.size == 0 or sums.size % cnt.size:
            raise InputError(f"{path}: imatrix entry {name} has {sums.size} sums for {cnt.size} counts")
        entries[name] = Entry(sums.reshape(cnt.size, -1).copy(), np.rint(cnt).astype(np.int64))
    datasets = _field(reader, KEY_DATASETS)
    if isinstance(datasets, str):
        datasets = [datasets]
    return Imatrix(entries, datasets=list(datasets or []), chunk_count=int(_field(reader, KEY_CHUNK_COUNT) or 0),
                   chunk_size=int(_field(reader, KEY_CHUNK_SIZE) or 0))


def _load_legacy(path: Path) -> Imatrix:
    """llama.cpp's legacy .dat: i32 n_entries, then per entry i32 len, name, i32 ncall, i32 nval,
    nval f32 (sum / count * ncall); optionally i32 chunk count and i32 len + dataset name."""
    data = path.read_bytes()
    pos = 0
    bad = InputError(f"{path}: neither a GGUF imatrix nor a readable legacy imatrix .dat file")

    def i32() -> int:
        nonlocal pos
        if pos + 4 > len(data):
            raise bad
        (v,) = struct.unpack_from("<i", data, pos)
        pos += 4
        return v

    n_entries = i32()
    if n_entries < 1 or n_entries > len(data) // 12:
        raise bad
    entries = {}
    for _ in range(n_entries):
        n = i32()
        if n < 0 or pos + n > len(data):
            raise bad
        try:
            name = data[pos:pos + n].decode("utf-8")
        except UnicodeDecodeError:
            raise bad from None
        pos += n
        ncall, nval = i32(), i32()
        if nval < 1 or pos + 4 * nval > len(data):
            raise bad
        sums = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        entries[name] = Entry(sums[None, :].copy(), np.array([ncall], dtype=np.int64))
    chunk_count, datasets = 0, []
    if pos + 4 <= len(data):
        chunk_count = i32()
        if pos + 4 <= len(data):
            n = i32()
            if n > 0 and pos + n <= len(data):
                datasets.append(data[pos:pos + n].decode("utf-8", errors="replace"))
    return Imatrix(entries, datasets=datasets, chunk_count=chunk_count, chunk_size=0, legacy=True)


