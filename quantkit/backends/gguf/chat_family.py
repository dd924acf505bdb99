"""Chat-template families: how to recognise each in a Jinja template, and what it renders.

A small table says, for each family, which markers its Jinja text holds and what it renders:
the text before and after each role's content, the generation prompt, and the strings that end
a turn. Before a family is used for a source, the source's own Jinja template is rendered (as
transformers renders it, jinja_render.py) on probe conversations and compared with the table's
rendering of the same conversations (`detect`); go_template.py turns a family into Ollama's
TEMPLATE.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from quantkit.backends.gguf.jinja_render import compile_jinja, render_jinja

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
        out += [prefix.replace("{bos}", first_bos).replace("{eos}", eos), content, fill_tokens(suffix, bos, eos)]
        started = True
    if add_generation_prompt:
        out.append(fill_tokens(family.generation, bos, eos))
    return "".join(out)


def render_for_ollama(family: Family, messages: list[dict], *, bos: str = "", eos: str = "",
                      default_system: str | None = None) -> str:
    """What the generated Go TEMPLATE renders in Ollama: the table's text, without the leading BOS
    (llama.cpp adds it), with the generation prompt after a user message, and with a final assistant
    message left open (Ollama continues it)."""
    prefill = bool(messages) and messages[-1]["role"] == "assistant"
    text = render(family, messages, bos=bos, eos=eos, add_generation_prompt=not prefill,
                  default_system=default_system, leading_bos=False)
    suffix = fill_tokens(family.assistant[1], bos, eos)
    if prefill and suffix:
        assert text.endswith(suffix)
        text = text[: -len(suffix)]
    return text


def fill_tokens(s: str, bos: str, eos: str) -> str:
    """A table string with "{bos}" / "{eos}" replaced by the tokenizer's texts."""
    return s.replace("{bos}", bos).replace("{eos}", eos)


# ---------------------------------------------------------------- matching a source template


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
            return render_jinja(compiled, msgs, gen, specials)
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
        head = (bos if family.bos else "") + fill_tokens(
            family.first_system_prefix if family.first_system_prefix is not None else family.system[0], bos, eos)
        base = table([P_U1], True, None)
        tail = fill_tokens(family.system[1], bos, eos) + base[len(bos) if family.bos else 0:]
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
    suffix = fill_tokens(family.assistant[1], bos, eos)
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


class Detection(NamedTuple):
    match: Match | None  # the family verified on the probes
    candidates: list[Family]  # families whose markers the template has
    why: str | None  # why its Jinja could not be rendered


def detect(template: str, specials: dict) -> Detection:
    """The family a source's chat template belongs to, verified by rendering it."""
    candidates = [f for f in FAMILIES if all(m in template for m in f.markers)]
    if not candidates:
        return Detection(None, [], None)
    try:
        compiled = compile_jinja(template)
    except ImportError:
        return Detection(None, candidates, "jinja2 is not installed")
    except Exception as e:  # a syntax the sandboxed environment does not parse
        return Detection(None, candidates, f"{type(e).__name__}: {e}")
    for f in candidates:
        m = _verify(f, compiled, specials)
        if m is not None:
            return Detection(m, candidates, None)
    return Detection(None, candidates, None)
