"""An Ollama Modelfile to lie beside each GGUF file: FROM, TEMPLATE, PARAMETER lines.

The chat format comes from the source's Jinja chat template. A small table of
chat-template families says, for each family, how to recognise its Jinja text
(markers) and what it renders: the text before and after each role's content,
the generation prompt, and the strings that end a turn. The Go TEMPLATE for
Ollama is generated from that table, so it says what the table says; and before
a family is used, the source's own Jinja template is rendered (as transformers
renders it) on probe conversations and compared with the table's rendering of
the same conversations. A template that matches no family, or whose family does
not render it exactly, gets no TEMPLATE: Ollama then uses the GGUF's own
tokenizer.chat_template (natively, through llama-server, since Ollama 0.30.0;
older versions match it against their built-in template library at `ollama
create` and otherwise fall back to `{{ .Prompt }}`), and a notice says so.

Ollama's Modelfile format (docs/modelfile.mdx, parser/parser.go in ollama/ollama):
one instruction per line, a TEMPLATE in triple double quotes may span lines,
`PARAMETER stop` repeats. The Go template sees `.Messages` (each with `.Role`, `.Content`);
Ollama merges consecutive messages of the same role, and when the last message
is the assistant's it continues that message, so the template leaves the
assistant's closing text off the last message and emits the generation prompt
only after a user (or system) message.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

NUM_CTX_CAP = 8192

# (prefix, suffix) around a message's content. "{bos}" / "{eos}" stand for the
# tokenizer's BOS / EOS text.
Turn = tuple[str, str]


@dataclass(frozen=True)
class Family:
    name: str
    markers: tuple[str, ...]  # every one must appear in the Jinja source
    user: Turn
    assistant: Turn
    generation: str  # after the last message, when the model is to answer
    stops: tuple[str, ...]
    system: Turn | None = None  # a system turn of its own; None: merged into the next user message
    first_system_prefix: str | None = None  # prefix of a system turn that opens the chat, when it differs
    merge_system: Turn = ("", "")  # around system text put in front of the next user message (system=None)
    bos: bool = False  # the template opens with bos_token (llama.cpp adds that BOS itself)
    strip: bool = False  # the template strips whitespace from each content (Go templates cannot)
    source: str = ""


FAMILIES: tuple[Family, ...] = (
    Family(
        name="chatml",
        markers=("<|im_start|>", "<|im_end|>"),
        system=("<|im_start|>system\n", "<|im_end|>\n"),
        user=("<|im_start|>user\n", "<|im_end|>\n"),
        assistant=("<|im_start|>assistant\n", "<|im_end|>\n"),
        generation="<|im_start|>assistant\n",
        stops=("<|im_start|>", "<|im_end|>"),
        source="SmolLM2-135M-Instruct, Qwen2 / Qwen2.5 Instruct, OpenHermes, quantkit's tiny model; "
        "Ollama template/chatml.gotmpl",
    ),
    Family(
        name="llama3.1",
        markers=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "Cutting Knowledge Date:"),
        bos=True,
        strip=True,
        first_system_prefix="<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
        system=("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
        user=("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
        assistant=("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
        generation="<|start_header_id|>assistant<|end_header_id|>\n\n",
        stops=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        source="meta-llama/Llama-3.1-8B-Instruct (without tools); "
        "Ollama's counterpart: template/llama3-instruct.gotmpl",
    ),
    Family(
        name="llama3",
        markers=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        bos=True,
        strip=True,
        system=("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
        user=("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
        assistant=("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
        generation="<|start_header_id|>assistant<|end_header_id|>\n\n",
        stops=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        source="meta-llama/Meta-Llama-3-8B-Instruct; Ollama's counterpart: template/llama3-instruct.gotmpl",
    ),
    Family(
        name="llama2",
        markers=("[INST]", "[/INST]", "<<SYS>>"),
        strip=True,
        merge_system=("<<SYS>>\n", "\n<</SYS>>\n\n"),
        user=("{bos}[INST] ", " [/INST]"),
        assistant=(" ", " {eos}"),
        generation="",
        stops=("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"),
        source="meta-llama/Llama-2-7b-chat-hf; Ollama's counterpart: template/llama2-chat.gotmpl",
    ),
    Family(
        name="mistral",
        markers=("[INST]", "[/INST]"),
        bos=True,
        merge_system=("", "\n\n"),
        user=(" [INST] ", " [/INST]"),
        assistant=(" ", "{eos}"),
        generation="",
        stops=("[INST]", "[/INST]"),
        source="mistralai Mistral-7B-Instruct-v0.1/v0.2 and Mixtral-8x7B-Instruct, 2024 template "
        "(system text before the first user message); Ollama's counterpart: template/mistral-instruct.gotmpl",
    ),
    Family(
        name="mistral-v0.1",
        markers=("[INST]", "[/INST]"),
        bos=True,
        merge_system=("", "\n\n"),
        user=("[INST] ", " [/INST]"),
        assistant=("", "{eos}"),
        generation="",
        stops=("[INST]", "[/INST]"),
        source="mistralai/Mixtral-8x7B-Instruct-v0.1, Mistral-7B-Instruct-v0.1 first template "
        "(rejects system messages); Ollama's counterpart: template/mistral-instruct.gotmpl",
    ),
    Family(
        name="zephyr",
        markers=("<|user|>", "<|assistant|>"),
        system=("<|system|>\n", "{eos}\n"),
        user=("<|user|>\n", "{eos}\n"),
        assistant=("<|assistant|>\n", "{eos}\n"),
        generation="<|assistant|>\n",
        stops=("<|system|>", "<|user|>", "<|assistant|>"),
        source="HuggingFaceH4/zephyr-7b-beta; Ollama's counterpart: template/zephyr.gotmpl",
    ),
)

FAMILY = {f.name: f for f in FAMILIES}

# Probe conversations. Contents have no surrounding whitespace, so families
# that strip content render them the same as the Go template, which cannot.
P_SYS = {"role": "system", "content": "You are a careful assistant."}
P_U1 = {"role": "user", "content": "Hello, who are you?"}
P_A1 = {"role": "assistant", "content": "I am a language model."}
P_U2 = {"role": "user", "content": "What is 2+2?"}


def render(
    family: Family,
    messages: list[dict],
    *,
    bos: str = "",
    eos: str = "",
    add_generation_prompt: bool = True,
    default_system: str | None = None,
    leading_bos: bool = True,
) -> str:
    """What the family's role table makes of a conversation: the text its Jinja template renders.
    leading_bos=False leaves out a BOS that would open the text (llama.cpp adds that one itself)."""
    out = [bos] if family.bos and leading_bos else []
    started = False
    msgs = list(messages)
    if family.system is not None and default_system is not None and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": default_system})
    pending = None
    for i, m in enumerate(msgs):
        role, content = m["role"], m["content"]
        if role == "system" and family.system is None:
            pending = content
            continue
        if role == "system":
            prefix, suffix = family.system
            if i == 0 and family.first_system_prefix is not None:
                prefix = family.first_system_prefix
        elif role == "user":
            prefix, suffix = family.user
            if pending is not None:
                content = family.merge_system[0] + pending + family.merge_system[1] + content
                pending = None
        elif role == "assistant":
            prefix, suffix = family.assistant
        else:
            raise ValueError(f"role {role!r} is not in the {family.name} table")
        if family.strip:
            content = content.strip()
        first_bos = bos if started or leading_bos else ""
        out += [prefix.replace("{bos}", first_bos).replace("{eos}", eos), content, _subst(suffix, bos, eos)]
        started = True
    if add_generation_prompt:
        out.append(_subst(family.generation, bos, eos))
    return "".join(out)


def render_for_ollama(family: Family, messages: list[dict], *, bos: str = "", eos: str = "",
                      default_system: str | None = None) -> str:
    """What the generated Go TEMPLATE renders in Ollama: the table's text, without the leading BOS
    (llama.cpp adds it), with the generation prompt after a user message, and with a final assistant
    message left open (Ollama continues it)."""
    prefill = bool(messages) and messages[-1]["role"] == "assistant"
    text = render(family, messages, bos=bos, eos=eos, add_generation_prompt=not prefill,
                  default_system=default_system, leading_bos=False)
    suffix = _subst(family.assistant[1], bos, eos)
    if prefill and suffix:
        assert text.endswith(suffix)
        text = text[: -len(suffix)]
    return text


def go_template(family: Family, *, bos: str = "", eos: str = "", default_system: str | None = None) -> str:
    """Ollama's Go TEMPLATE for the family, built from its role table. No whitespace trimming anywhere:
    every character outside {{ }} is output, so the literal text is exactly the table's."""

    started = any("{bos}" in s for s in (*family.user, *family.assistant, *(family.system or ()), family.generation))

    def lit(s: str) -> str:
        s = s.replace("{eos}", eos)
        if started:
            s = s.replace("{bos}", "{{ if $started }}" + bos + "{{ end }}")
        else:
            s = s.replace("{bos}", bos)
        return s

    mark = "{{ $started = true }}" if started else ""
    out = []
    if started:
        out.append("{{ $started := false }}")
    if family.system is None:
        out.append('{{ $system := "" }}')
    out.append("{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}")
    if family.system is not None:
        first = family.first_system_prefix
        if default_system is not None:
            out.append('{{ if and (eq $i 0) (ne .Role "system") }}'
                       + lit(first if first is not None else family.system[0]) + default_system
                       + lit(family.system[1]) + mark + "{{ end }}")
        out.append('{{ if eq .Role "system" }}')
        if first is not None:
            out.append("{{ if eq $i 0 }}" + lit(first) + "{{ else }}" + lit(family.system[0]) + "{{ end }}")
        else:
            out.append(lit(family.system[0]))
        out.append("{{ .Content }}" + lit(family.system[1]) + mark)
    else:
        out.append('{{ if eq .Role "system" }}{{ $system = .Content }}')
    out.append('{{ else if eq .Role "user" }}' + lit(family.user[0]))
    if family.system is None:
        out.append("{{ if $system }}" + lit(family.merge_system[0]) + "{{ $system }}" + lit(family.merge_system[1])
                   + '{{ $system = "" }}{{ end }}')
    out.append("{{ .Content }}" + lit(family.user[1]) + mark)
    out.append('{{ else if eq .Role "assistant" }}' + lit(family.assistant[0]) + "{{ .Content }}")
    if family.assistant[1]:
        out.append("{{ if not $last }}" + lit(family.assistant[1]) + "{{ end }}")
    out.append(mark + "{{ end }}")
    if family.generation:
        out.append('{{ if and $last (ne .Role "assistant") }}' + lit(family.generation) + "{{ end }}")
    out.append("{{ end }}")
    return "".join(out)


# ---------------------------------------------------------------- reading the source


def _read_json(path: Path, notices: list[str]) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        notices.append(f"Modelfile: could not read {path.name} ({e}); ignored it")
        return {}
    return data if isinstance(data, dict) else {}


def read_chat_template(source_dir: Path, tokenizer_config: dict | None = None) -> str | None:
    """The source's chat template: chat_template.jinja, else tokenizer_config.json's chat_template (a string, or a
    list of {name, template} whose "default" is the one), else chat_template.json."""
    source_dir = Path(source_dir)
    f = source_dir / "chat_template.jinja"
    if f.is_file():
        text = f.read_text(encoding="utf-8")
        if text.strip():
            return text
    if tokenizer_config is None:
        tokenizer_config = _read_json(source_dir / "tokenizer_config.json", [])
    t = _pick_template(tokenizer_config.get("chat_template"))
    if t:
        return t
    return _pick_template(_read_json(source_dir / "chat_template.json", []).get("chat_template"))


def _pick_template(value) -> str | None:
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, list):
        named = {d.get("name"): d.get("template") for d in value if isinstance(d, dict)}
        t = named.get("default")
        return t if isinstance(t, str) and t.strip() else None
    return None


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


# ---------------------------------------------------------------- Jinja, as transformers renders it


def compile_jinja(source: str):
    """The chat template compiled the way transformers compiles it (sandboxed, trim_blocks, lstrip_blocks,
    loop controls, raise_exception, strftime_now, tojson)."""
    from datetime import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class Generation(jinja2.ext.Extension):
        """{% generation %}...{% endgeneration %} (transformers' assistant-mask marker): renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, Generation])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def _render_jinja(compiled, messages, add_generation_prompt, specials):
    return compiled.render(messages=messages, tools=None, documents=None,
                           add_generation_prompt=add_generation_prompt, **specials)


@dataclass
class Match:
    family: Family
    default_system: str | None
    system_checked: bool  # False: the source template rejects system messages, so the table's system handling is ours


def _verify(family: Family, compiled, specials: dict) -> Match | None:
    """The family if its table renders the probe conversations as the source template does, where Ollama can
    tell: chats ending in a user message, with the generation prompt; and chats ending in the assistant's message,
    whose closing text Ollama leaves off anyway (it continues that message)."""
    bos, eos = specials.get("bos_token", ""), specials.get("eos_token", "")

    def jinja(msgs, gen):
        try:
            return _render_jinja(compiled, msgs, gen, specials)
        except Exception:  # the template's own raise_exception, or anything it cannot do
            return None

    def table(msgs, gen, default):
        return render(family, msgs, bos=bos, eos=eos, add_generation_prompt=gen, default_system=default)

    single = jinja([P_U1], True)
    if single is None:
        return None
    default = None
    if single != table([P_U1], True, None):
        if family.system is None:
            return None
        # A template that opens the chat with a system turn of its own when there is none (Qwen, SmolLM2,
        # Llama 3.1): find that default system text.
        head = (bos if family.bos else "") + _subst(
            family.first_system_prefix if family.first_system_prefix is not None else family.system[0], bos, eos)
        base = table([P_U1], True, None)
        tail = _subst(family.system[1], bos, eos) + base[len(bos) if family.bos else 0:]
        if not (single.startswith(head) and single.endswith(tail) and len(single) >= len(head) + len(tail)):
            return None
        default = single[len(head): len(single) - len(tail)]
        if "{{" in default or "}}" in default or '"""' in default or "\r" in default:
            return None
    for msgs in ([P_U1], [P_U1, P_A1, P_U2]):
        if jinja(msgs, True) != table(msgs, True, default):
            return None
    got = jinja([P_U1, P_A1], False)
    closed = table([P_U1, P_A1], False, default)
    suffix = _subst(family.assistant[1], bos, eos)
    if got is None or got not in (closed, closed[: len(closed) - len(suffix)]):
        return None
    system_checked = True
    for msgs in ([P_SYS, P_U1], [P_SYS, P_U1, P_A1, P_U2]):
        got = jinja(msgs, True)
        if got is None:
            system_checked = False
        elif got != table(msgs, True, default):
            return None
    return Match(family, default, system_checked)


def detect(template: str, specials: dict) -> tuple[Match | None, list[Family], str | None]:
    """(verified match or None, families whose markers the template has, why Jinja could not be rendered)."""
    candidates = [f for f in FAMILIES if all(m in template for m in f.markers)]
    if not candidates:
        return None, [], None
    try:
        compiled = compile_jinja(template)
    except ImportError:
        return None, candidates, "jinja2 is not installed"
    except Exception as e:  # a syntax the sandboxed environment does not parse
        return None, candidates, f"{type(e).__name__}: {e}"
    for f in candidates:
        m = _verify(f, compiled, specials)
        if m is not None:
            return m, candidates, None
    return None, candidates, None


# ---------------------------------------------------------------- the Modelfile


def _subst(s: str, bos: str, eos: str) -> str:
    return s.replace("{bos}", bos).replace("{eos}", eos)


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


def modelfile(gguf_name: str, source_dir: Path, config: dict) -> tuple[str, list[str]]:
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
    template = read_chat_template(source_dir, tok_cfg)

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
            stops = [_subst(s, bos, eos) for s in f.stops]
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
                stops = [s for s in (_subst(s, bos, eos) for s in candidates[0].stops) if s in template]
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
    return "\n".join(lines) + "\n", notices
