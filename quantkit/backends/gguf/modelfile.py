"""An Ollama Modelfile to lie beside each GGUF file: FROM, TEMPLATE, PARAMETER lines.

The chat format comes from the source's Jinja chat template: its family (chat_family.py),
verified by rendering, gives the Go TEMPLATE (go_template.py) and the stop strings. A template
that matches no family, or whose family does not render it exactly, gets no TEMPLATE: Ollama
then uses the GGUF's own tokenizer.chat_template (natively, through llama-server, since Ollama
0.30.0; older versions match it against their built-in template library at `ollama create` and
otherwise fall back to `{{ .Prompt }}`), and a notice says so. Sampling parameters and the
context come from generation_config.json and config.json.

Ollama's Modelfile format (docs/modelfile.mdx, parser/parser.go in ollama/ollama): one
instruction per line, a TEMPLATE in triple double quotes may span lines, `PARAMETER stop` repeats.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

from quantkit.backends.gguf.chat_family import detect, fill_tokens
from quantkit.backends.gguf.go_template import go_template
from quantkit.chat_template import read_chat_template
from quantkit.jsonfile import UnreadableJSON, read_object

NUM_CTX_CAP = 8192


class Modelfile(NamedTuple):
    text: str
    notices: list[str]  # for the user


# ---------------------------------------------------------------- reading the source


def _read_json(path: Path, notices: list[str]) -> dict:
    try:
        return read_object(path)
    except UnreadableJSON as e:
        notices.append(f"Modelfile: could not read {path.name} ({e.reason}); ignored it")
        return {}


def _token_text(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _special_tokens(source_dir: Path, tok_cfg: dict, notices: list[str]) -> dict[str, str]:
    """bos_token, eos_token, ... as text, from tokenizer_config.json, then special_tokens_map.json."""
    stm = _read_json(source_dir / "special_tokens_map.json", notices)
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
        t = _token_text(tok_cfg.get(key))
        if t is None:
            t = _token_text(stm.get(key))
        if t is not None:
            out[key] = t
    return out


def _id_to_text(source_dir: Path, tok_cfg: dict, ids: list[int]) -> dict[int, str]:
    found = {}
    decoder = tok_cfg.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        for k, v in decoder.items():
            t = _token_text(v)
            if t is not None and str(k).isdigit():
                found[int(k)] = t
    missing = [i for i in ids if i not in found]
    if missing and (source_dir / "tokenizer.json").is_file():
        try:
            tj = json.loads((source_dir / "tokenizer.json").read_text(encoding="utf-8"))
            for t in tj.get("added_tokens") or []:
                if isinstance(t, dict) and isinstance(t.get("id"), int) and isinstance(t.get("content"), str):
                    found.setdefault(t["id"], t["content"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
    return {i: found[i] for i in ids if i in found}


def _as_ids(value) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _eos_texts(source_dir: Path, tok_cfg: dict, specials: dict, gen_cfg: dict, config: dict) -> list[str]:
    texts = []
    if specials.get("eos_token"):
        texts.append(specials["eos_token"])
    ids = _as_ids(gen_cfg.get("eos_token_id")) + _as_ids(config.get("eos_token_id"))
    if ids:
        by_id = _id_to_text(source_dir, tok_cfg, ids)
        texts += [by_id[i] for i in ids if i in by_id]
    return _unique(t for t in texts if t)


def _unique(items) -> list:
    seen, out = set(), []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


# ---------------------------------------------------------------- the Modelfile


def _num(v) -> str:
    s = repr(float(v))
    return s[:-2] if s.endswith(".0") else s


def _parameters(gen_cfg: dict, config: dict, notices: list[str]) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    mpe = config.get("max_position_embeddings")
    if not isinstance(mpe, int) and isinstance(config.get("text_config"), dict):
        mpe = config["text_config"].get("max_position_embeddings")
    if isinstance(mpe, int) and not isinstance(mpe, bool) and mpe > 0:
        params.append(("num_ctx", str(min(mpe, NUM_CTX_CAP))))

    def real(key, lo=0.0, hi=math.inf):
        v = gen_cfg.get(key)
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi) or math.isnan(v):
            if v is not None:
                notices.append(f"Modelfile: generation_config.json {key}={v!r} is not usable; left it out")
            return None
        return v

    if gen_cfg.get("do_sample") is False:
        if any(gen_cfg.get(k) is not None for k in ("temperature", "top_p", "top_k", "min_p")):
            notices.append("Modelfile: generation_config.json sets do_sample=false (greedy decoding), so its "
                           "sampling settings are unused there; wrote temperature 0 instead")
        params.append(("temperature", "0"))
    else:
        if (t := real("temperature")) is not None:
            params.append(("temperature", _num(t)))
        if (p := real("top_p", 0.0, 1.0)) is not None:
            params.append(("top_p", _num(p)))
        if (k := real("top_k")) is not None and float(k).is_integer():
            params.append(("top_k", str(int(k))))
        if (p := real("min_p", 0.0, 1.0)) is not None:
            params.append(("min_p", _num(p)))
    if (r := real("repetition_penalty")) is not None and r > 0:
        params.append(("repeat_penalty", _num(r)))
    return params


def _quote_param(v: str) -> str:
    return '"' + v + '"'


def modelfile(gguf_name: str, source_dir: Path, config: dict) -> Modelfile:
    """The Ollama Modelfile text for the GGUF file `gguf_name` (written beside it), and notices for the user."""
    if not gguf_name or "/" in gguf_name or "\\" in gguf_name or "\n" in gguf_name or "\r" in gguf_name:
        raise ValueError(f"gguf_name must be a bare file name, got {gguf_name!r}")
    source_dir = Path(source_dir)
    config = config or {}
    notices: list[str] = []
    tok_cfg = _read_json(source_dir / "tokenizer_config.json", notices)
    gen_cfg = _read_json(source_dir / "generation_config.json", notices)
    specials = _special_tokens(source_dir, tok_cfg, notices)
    eos_texts = _eos_texts(source_dir, tok_cfg, specials, gen_cfg, config)
    template = read_chat_template(source_dir)

    go = None
    stops: list[str] = []
    lines = [f"# Ollama Modelfile for {gguf_name}, written by quantkit", f"FROM ./{gguf_name}"]
    if template is None:
        notices.append("Modelfile: the source has no chat template (a base model?); wrote no TEMPLATE, so Ollama "
                       "sends prompts as they are, and the only stop is the EOS token")
    else:
        match, candidates, why = detect(template, specials)
        if match is not None:
            f = match.family
            bos, eos = specials.get("bos_token", ""), specials.get("eos_token", "")
            go = go_template(f, bos=bos, eos=eos, default_system=match.default_system)
            stops = [fill_tokens(s, bos, eos) for s in f.stops]
            lines[0] += f"; chat format: {f.name}"
            if not match.system_checked:
                where = ("in its own turn" if f.system is not None else "in front of the first user message")
                notices.append(f"Modelfile: the source chat template ({f.name}) rejects system messages; the TEMPLATE "
                               f"puts a system message {where}, which the model may not have been trained on")
            if "tools" in template or "tool_call" in template or ("<think>" in template and "</think>" in template):
                notices.append("Modelfile: the source chat template handles tools or thinking, which the TEMPLATE "
                               "does not; Ollama 0.30 and later then prefer the GGUF's own chat template "
                               "(set OLLAMA_GO_TEMPLATE=1 to use the TEMPLATE)")
        else:
            if candidates:
                names = ", ".join(f.name for f in candidates)
                reason = f" (its Jinja could not be rendered: {why})" if why else " but renders differently"
                notices.append(f"Modelfile: the source chat template looks like {names}{reason}; wrote no TEMPLATE")
                bos, eos = specials.get("bos_token", ""), specials.get("eos_token", "")
                stops = [s for s in (fill_tokens(s, bos, eos) for s in candidates[0].stops) if s in template]
            else:
                notices.append("Modelfile: the source chat template is of no family quantkit knows; wrote no TEMPLATE")
            notices.append("Modelfile: without a TEMPLATE, Ollama 0.30.0 and later render chats with the GGUF's "
                           "tokenizer.chat_template (through llama-server); older Ollama matches it against its "
                           "built-in templates at `ollama create`, else uses the prompt as it is")
    stops = _unique([s for s in stops + eos_texts if s])
    if not eos_texts:
        notices.append("Modelfile: found no EOS token text in the source's tokenizer files; no EOS stop")

    if go is not None:
        if '"""' in go:
            notices.append('Modelfile: the chat template contains """, which a Modelfile cannot quote; '
                           'wrote no TEMPLATE')
        else:
            lines.append(f'TEMPLATE """{go}"""')
    for k, v in _parameters(gen_cfg, config, notices):
        lines.append(f"PARAMETER {k} {v}")
    for s in stops:
        if "\n" in s or "\r" in s or '"' in s:
            notices.append(f"Modelfile: stop string {s!r} cannot be written on one PARAMETER line; left it out")
            continue
        lines.append(f"PARAMETER stop {_quote_param(s)}")
    return Modelfile("\n".join(lines) + "\n", notices)
