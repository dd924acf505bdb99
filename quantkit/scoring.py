"""verify: score a source and its quantized artifacts on the same token windows.

Windows follow llama.cpp's perplexity tool: the text is tokenized once with BOS,
cut into chunks of `ctx` tokens, the first token of each chunk is set to BOS, and
only the second half of each chunk is scored (positions ctx/2 .. ctx-2 predicting
the next token). For every scored position: the quantized model's NLL, the KL
divergence from the source's distribution to the quantized one, whether both
argmaxes agree, and the change in probability of the true next token.
Work streams window by window: each model's logits for one window are all that
is held; per-position figures are kept as one float each for medians and p99.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError
import torch

from quantkit import figures, manifest, output
from quantkit.errors import InputError, OutputError, QuantkitError, flag_name
from quantkit.manifest import VerifyResult
from quantkit.progress import CountProgress
from quantkit.text import load_text


class GateFailed(QuantkitError):
    """A verify gate (--max-ppl-ratio, --max-kld) was exceeded."""


def tokenize(tokenizer, text: str, max_tokens: int | None) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    ids = ([bos] if bos is not None else []) + ids
    return ids[:max_tokens] if max_tokens else ids


def windows(ids: list[int], ctx: int, bos: int | None) -> list[list[int]]:
    chunks = [ids[i : i + ctx] for i in range(0, len(ids) - ctx + 1, ctx)]
    if bos is not None:
        chunks = [[bos] + c[1:] for c in chunks]
    return chunks


def ppl_with_error(nll: np.ndarray) -> tuple[float, float]:
    """PPL and its ± as llama.cpp reports them."""
    mean = float(nll.mean())
    ppl = math.exp(mean)
    var = max(float((nll * nll).mean()) - mean * mean, 0.0)
    return ppl, ppl * math.sqrt(var / max(len(nll) - 1, 1))


@dataclass
class Tally:
    nll: list = field(default_factory=list)
    kld: list = field(default_factory=list)
    same_top: int = 0
    dp: list = field(default_factory=list)

    def add_window(self, logp_src: torch.Tensor, logp_q: torch.Tensor, target: torch.Tensor) -> None:
        self.nll.append(-logp_q.gather(1, target[:, None])[:, 0].double().numpy())
        p_src = logp_src.exp()
        self.kld.append((p_src * (logp_src - logp_q)).sum(-1).clamp_min(0).double().numpy())
        self.same_top += int((logp_src.argmax(-1) == logp_q.argmax(-1)).sum())
        pt_src = p_src.gather(1, target[:, None])[:, 0]
        pt_q = logp_q.gather(1, target[:, None])[:, 0].exp()
        self.dp.append((pt_q - pt_src).double().numpy())


def _summary(src_nll: np.ndarray, t: Tally) -> dict:
    nll, kld, dp = np.concatenate(t.nll), np.concatenate(t.kld), np.concatenate(t.dp)
    ppl_s, err_s = ppl_with_error(src_nll)
    ppl_q, err_q = ppl_with_error(nll)
    return {
        "ppl_source": ppl_s, "ppl_source_err": err_s,
        "ppl_quant": ppl_q, "ppl_quant_err": err_q,
        "ppl_ratio": ppl_q / ppl_s,
        "kld_mean": float(kld.mean()), "kld_median": float(np.median(kld)),
        "kld_p99": float(np.percentile(kld, 99)), "kld_max": float(kld.max()),
        "top1_agreement": t.same_top / len(kld),
        "rms_delta_p": float(np.sqrt((dp * dp).mean())),
        "tokens_scored": int(len(kld)),
    }


@dataclass
class _Scored:
    """One model verify scores: streamed layer by layer (`model`), or a whole runtime (`whole`: llama.cpp)."""
    path: Path
    format: str
    size_bytes: int
    activations: str
    vocab_size: int
    runtime: str
    model: object = None  # streaming.LayerModel
    whole: object = None  # loaders.Scorer
    states: object = None  # streaming.States of this model's hidden states


def _open(path: Path, runtime: str, device) -> _Scored:
    from quantkit import loaders, streaming

    if runtime != "transformers" and loaders._is_gguf(path):
        w = loaders.load(path, runtime)
        return _Scored(w.path, w.format, w.size_bytes, w.activations, w.vocab_size, w.runtime, whole=w)
    target = loaders._one_gguf(path) if loaders._is_gguf(path) else path
    m = streaming.open_model(target, device)
    return _Scored(target, m.weights.format, m.weights.size_bytes, m.weights.activations, m.vocab_size,
                   f"transformers modules one decoder layer at a time on {device.type}, float32 compute"
                   + (f", {torch.get_num_threads()} torch threads" if device.type == "cpu" else ""), model=m)


def _run_layers(models: list[_Scored], chunks: list[list[int]], device, step) -> None:
    """Every streamed model through all its layers, in lockstep: layer i of each, then layer i+1.
    Only one layer's weights are in memory; each model's hidden states of all windows are kept."""
    from quantkit import streaming

    streamed = [m for m in models if m.model is not None]
    if not streamed:
        return
    ids = torch.tensor(chunks)
    hidden = streamed[0].model.config.hidden_size
    for m in streamed:
        m.states = streaming.States(len(chunks), (1, ids.shape[1], hidden), device=device)
        embedded = m.model.embed(ids)
        for w in range(len(chunks)):
            m.states[w] = embedded[w][None]
        del embedded
    pos = streamed[0].model.positions(ids.shape[1])
    layers = {m.model.num_layers for m in streamed}
    if len(layers) != 1:
        raise InputError(f"the models have {sorted(layers)} layers; verify artifacts of one source together")
    with torch.inference_mode():
        for i in range(layers.pop()):
            for m in streamed:
                with m.model.layer(i) as layer:
                    for group in _batches(len(chunks), ids.shape[1]):
                        out = streaming.layer_forward(layer, torch.cat([m.states[w] for w in group]), pos)
                        for w, x in zip(group, out.split(1)):
                            m.states[w] = x
                step()


def _batches(n: int, ctx: int, rows: int = 2048) -> list[range]:
    """Windows run together through a layer: about `rows` tokens a forward (fewer, larger matmuls)."""
    size = max(1, rows // ctx)
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


class _Head:
    """A streamed model's final norm and head, held while its windows' logits are computed."""

    def __init__(self, m: _Scored):
        self.m = m
        if m.model is not None:
            self.norm = m.model.final_norm()
            self.weight = m.model.head_weight()
            self.hook = m.model.head_hook()

    def logits(self, w: int, c: list[int]) -> torch.Tensor:
        if self.m.whole is not None:
            return self.m.whole.logits(c)
        with torch.inference_mode():
            x = self.norm(self.m.states[w])[0]
            if self.hook is not None:
                x = self.hook(None, (x,))[0]
            return torch.nn.functional.linear(x, self.weight).float()


def verify(quants: list[Path], source: Path | None, eval_text: str | None = None, ctx: int = 512,
           max_tokens: int | None = 8192, show_progress: bool = False, runtime: str = "transformers",
           allow_pickle: bool = False, notice=lambda msg: None, device: str = "auto") -> list[VerifyResult]:
    """Score each artifact against the source; returns one result per artifact.
    Source and artifacts are checked before any model is loaded (quantkit/loaders.check). All models
    stream one decoder layer at a time in lockstep (quantkit/streaming); the source is run once
    for any number of artifacts, and its log-probabilities at the head are kept (on disk above the
    states budget) while each artifact's head is run in turn."""
    from transformers import AutoTokenizer

    from quantkit import loaders, streaming
    from quantkit.source import resolve

    quants = [Path(q) for q in quants]
    for q in quants:
        loaders.check(q, allow_pickle)
    if runtime not in loaders.GGUF_RUNTIMES:
        raise InputError(f"--runtime {runtime}: choose {' or '.join(loaders.GGUF_RUNTIMES)}")
    if source is None:
        source = _source_from_manifest(quants[0])
    if ctx < 16 or ctx % 2:
        raise InputError(f"--ctx {ctx}: use an even window of at least 16 tokens, e.g. 512")
    dev = streaming.device(device)
    text, described = load_text(eval_text, "evaluation")
    src = resolve(str(source), allow_pickle=allow_pickle)  # the same checks as a conversion source
    for q in quants:
        why = _other_source(q, src)
        if why:
            notice(why)
    tok = AutoTokenizer.from_pretrained(src.path)
    chunks = windows(tokenize(tok, text, max_tokens), ctx, tok.bos_token_id)
    if not chunks:
        raise InputError(f"the evaluation text gives fewer than {ctx} tokens; pass a longer --eval-text or a larger --tokens")
    src_model = streaming.from_source(src, dev)
    reference = _Scored(src.path, "source", src.weight_bytes, "", src_model.vocab_size, "", model=src_model)
    models = [_open(q, runtime, dev) for q in quants]
    for q, m in zip(quants, models):
        if m.vocab_size != reference.vocab_size:
            raise InputError(f"{q} has a vocabulary of {m.vocab_size}, the source {reference.vocab_size}; verify it against its own source")
    everyone = [reference, *models]
    n_layers = src_model.num_layers
    streamed = sum(m.model is not None for m in everyone)
    first = ctx // 2
    tallies = [Tally() for _ in models]
    src_nll = []
    total = n_layers * streamed + len(chunks) * len(everyone)
    try:
        with CountProgress(f"scoring {len(chunks)} windows x {len(everyone)} models, layer by layer", total,
                           show_progress) as bar:
            _run_layers(everyone, chunks, dev, lambda: bar.advance())
            scored = len(chunks[0]) - first - 1
            with streaming.States(len(chunks), (scored, reference.vocab_size)) as logp_src:
                head = _Head(reference)
                for w, c in enumerate(chunks):
                    target = torch.tensor(c[first + 1 :])
                    lp = torch.log_softmax(head.logits(w, c)[first:-1].cpu(), dim=-1)
                    src_nll.append(-lp.gather(1, target[:, None])[:, 0].double().numpy())
                    logp_src[w] = lp
                    bar.advance()
                del head
                for m, t in zip(models, tallies):
                    head = _Head(m)
                    for w, c in enumerate(chunks):
                        target = torch.tensor(c[first + 1 :])
                        lq = torch.log_softmax(head.logits(w, c)[first:-1].cpu(), dim=-1)
                        t.add_window(logp_src[w], lq, target)
                        bar.advance()
                    del head
    finally:
        for m in everyone:
            if m.states is not None:
                m.states.close()
    src_nll_all = np.concatenate(src_nll)
    results = []
    for q, m, t in zip(quants, models, tallies):
        results.append(VerifyResult(
            artifact=str(q), artifact_created=_created(q), format=m.format, size_bytes=m.size_bytes,
            source=str(src.path), **_summary(src_nll_all, t),
            ctx=ctx, windows=len(chunks), text=described, activations=m.activations,
            method=f"llama.cpp perplexity windows: ctx {ctx}, second half of each scored; " + m.runtime))
    return results


def _other_source(artifact: Path, src) -> str | None:
    """Why the artifact's quantkit.json says it was made from another model than `src`, or None.
    Weight files are compared by name and size, and by sha256 when the folders differ but those agree."""
    m = manifest.read(_folder(artifact))
    made = m.source if m else None
    if made is None or not made.weight_files or Path(made.path or "") == src.path:
        return None
    recorded = made.weight_files
    have = {p.name: p for p in src.weight_files}
    same = set(recorded) == set(have) and all(
        have[n].stat().st_size == e.bytes and (e.sha256 is None or output.sha256_file(have[n]) == e.sha256)
        for n, e in recorded.items())
    if same:
        return None
    return (f"{artifact.name} was made from {made.spec or made.path} (its quantkit.json), "
            f"not from {src.spec}; its figures compare it with another model")


def _folder(artifact: Path) -> Path:
    return artifact if artifact.is_dir() else artifact.parent


def _source_from_manifest(artifact: Path) -> Path:
    m = manifest.read(_folder(artifact))
    if not m or not m.source.path:
        raise InputError(f"{artifact} has no quantkit.json naming its source; pass --source MODEL")
    return Path(m.source.path)


def _created(artifact: Path) -> str | None:
    m = manifest.read(_folder(artifact))
    return m.created if m else None


def record(results: list[VerifyResult]) -> list[Path]:
    """Write each result into its artifact's quantkit.json (where there is one), holding the
    artifact's output lock, and only if it is still the artifact that was scored."""
    from quantkit import card

    written = []
    for r in results:
        art = Path(r.artifact)
        folder = _folder(art)
        if manifest.read(folder) is None:  # not a quantkit artifact: nothing to record into
            if (folder / output.MANIFEST).exists():
                what = "not a JSON object" if manifest.read_dict(folder) is None else "not a quantkit manifest"
                raise OutputError(f"{folder / output.MANIFEST} is damaged ({what}); the figures were not "
                                  "recorded: restore it, or pass --no-record")
            continue
        with output.OutputLock(folder):
            m = manifest.read(folder)
            if m is None or m.created != r.artifact_created:
                raise OutputError(f"{folder} was rebuilt while verify scored it; its figures were not "
                                         "recorded: run quantkit verify on it again")
            recorded = VerifyResult.model_validate(r.figures())
            if art.is_file():  # one of several files in a folder (GGUF types): keyed by file name
                m.verify_files = {**(m.verify_files or {}), art.name: recorded}
            else:
                m.verify = recorded
            path = manifest.write(folder, m)
            card.write_card(folder, m.to_dict())  # the card shows the figures just measured
        written.append(path)
    return written


def check_gate_values(max_ppl_ratio: float | None, max_kld: float | None) -> None:
    """The gates given on the command line, checked by the one gates model (figures.Gates)."""
    try:
        figures.Gates(max_ppl_ratio=max_ppl_ratio, max_kld=max_kld)
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(f"{flag_name(str(err['loc'][0]))} {err['input']}: give a finite number of at least 0, e.g. 1.05") from None


def check_gates(results: list[VerifyResult], max_ppl_ratio: float | None, max_kld: float | None) -> None:
    """Raise GateFailed naming every result past a gate given on the command line."""
    failed = figures.gate_failures(results, max_ppl_ratio, max_kld)
    if failed:
        raise GateFailed("gate failed: " + "; ".join(failed))


def _short_labels(names: list[str]) -> list[str]:
    """Artifact names without the model name they all share (e.g. 'FP8-Dynamic', 'Q4_K_M.gguf')."""
    if len(names) < 2:
        return names
    prefix = os.path.commonprefix(names)
    cut = max(prefix.rfind("-"), prefix.rfind("_")) + 1
    short = [n[cut:] for n in names]
    return short if all(short) else names


def chart(results: list[VerifyResult] | list[dict], path: Path, title: str = "quantkit verify") -> Path:
    """PNG: artifact size against PPL ratio and against mean KLD; one marker per artifact, named in a legend.
    `results` are VerifyResults or their JSON form (a release report's rows)."""
    import matplotlib

    results = [r.model_dump() if isinstance(r, VerifyResult) else r for r in results]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _short_labels([Path(r["artifact"]).name for r in results])
    big = max(r["size_bytes"] for r in results) >= 2**30
    unit, div = ("GiB", 2**30) if big else ("MiB", 2**20)
    markers = "osD^vP*Xh<>"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, key, label in ((axes[0], "ppl_ratio", "PPL ratio (quant / source)"), (axes[1], "kld_mean", "mean KL divergence")):
        for i, (r, name) in enumerate(zip(results, names)):
            ax.scatter(r["size_bytes"] / div, r[key], marker=markers[i % len(markers)], s=50, label=name)
        ax.set_xlabel(f"size ({unit})")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle(f"{title}: {results[0]['tokens_scored']} tokens scored, ctx {results[0]['ctx']}")
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(labels) - 1) // 4), 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    output.write_bytes_atomic(path, buf.getvalue())
    return path
