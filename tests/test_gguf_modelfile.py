"""The Ollama Modelfile beside each GGUF: chat-template families checked against real Jinja templates.

Each real template is rendered with transformers' own chat-template renderer and compared with what the family's
role table produces for the same conversation. The Go TEMPLATE is generated from that role table; a small
interpreter for the Go-template subset it uses renders it here too (and real Go's text/template, when `go` is on
PATH), and a port of Ollama's Modelfile parser (parser/parser.go) reads the Modelfile back. Ollama itself is not run.
Sources of the stored templates: tests/data/chat_templates/SOURCES.md.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from quantkit.backends.gguf import chat_family as cf
from quantkit.backends.gguf import modelfile as mf
from quantkit.backends.gguf.go_template import go_template
from quantkit.chat_template import read_chat_template

DATA = Path(__file__).parent / "data" / "chat_templates"

SP = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
LLAMA3 = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
QWEN = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}

SYSTEM = {"role": "system", "content": "You are a pirate. Answer in one line."}
USER1 = {"role": "user", "content": "Where is the treasure?"}
ASSISTANT1 = {"role": "assistant", "content": "Under the old oak, matey."}
USER2 = {"role": "user", "content": "And the map?"}
SAMPLE = [SYSTEM, USER1, ASSISTANT1, USER2]
NO_SYSTEM = [USER1, ASSISTANT1, USER2]

# (file, family, special tokens, default system text the template adds, whether it accepts system messages)
REAL = [
    ("llama-3.1-8b-instruct.jinja", "llama3.1", LLAMA3, "", True),
    ("meta-llama-3-8b-instruct.jinja", "llama3", LLAMA3, None, True),
    ("llama-2-7b-chat.jinja", "llama2", SP, None, True),
    ("mistral-instruct-v0.1-2024.jinja", "mistral", SP, None, True),
    ("mixtral-8x7b-instruct-v0.1.jinja", "mistral-v0.1", SP, None, False),
    ("zephyr-7b-beta.jinja", "zephyr", SP, None, True),
    ("qwen1.5-72b-chat.jinja", "chatml", QWEN, "You are a helpful assistant", True),
    ("qwen2.5-7b-instruct.jinja", "chatml", QWEN,
     "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", True),
]
# Real templates that no family renders: ChatML markers with a metadata system block (SmolLM3), Zephyr-like
# markers with other turn ends (an early Phi-3), and no known markers at all (Gemma).
UNRECOGNISED = [("smollm3-3b.jinja", ["chatml"], QWEN), ("phi-3-mini-early.jinja", ["zephyr"], SP),
                ("gemma-it.jinja", [], {"bos_token": "<bos>", "eos_token": "<eos>"})]


def hf_render(template: str, messages: list[dict], specials: dict, add_generation_prompt=True, **kw) -> str:
    """The chat as transformers renders it (what tokenizer.apply_chat_template(tokenize=False) returns)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    out = render_jinja_template(conversations=[messages], chat_template=template,
                                add_generation_prompt=add_generation_prompt, **kw, **specials)
    rendered = out[0] if isinstance(out, tuple) else out
    return rendered[0] if isinstance(rendered, list) else rendered


def source_dir(tmp_path: Path, template: str, specials: dict, gen: dict | None = None, name="src") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "chat_template.jinja").write_text(template)
    (d / "tokenizer_config.json").write_text(json.dumps(specials))
    if gen is not None:
        (d / "generation_config.json").write_text(json.dumps(gen))
    return d


# ------------------------------------------------------------------ Ollama's Modelfile parser, ported


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """parser.ParseFile from ollama/ollama parser/parser.go, state for state: (command, argument) pairs."""
    NIL, NAME, VALUE, PARAM, MESSAGE, COMMENT = range(6)
    valid = {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter",
             "message", "requires"}

    def alpha(r):
        return "a" <= r <= "z" or "A" <= r <= "Z"

    def space(r):
        return r in " \t"

    def newline(r):
        return r in "\r\n"

    def unquote(s):
        if s[:3] == '"""':
            return (s[3:-3], True) if len(s) >= 6 and s[-3:] == '"""' else ("", False)
        if s[:1] == '"':
            return (s[1:-1], True) if len(s) >= 2 and s[-1] == '"' else ("", False)
        return s, True

    def step(r, cs):
        if cs == NIL:
            return (COMMENT, None) if r == "#" else (NIL, None) if space(r) or newline(r) else (NAME, r)
        if cs == NAME:
            if alpha(r):
                return NAME, r
            if space(r):
                return VALUE, None
            raise ValueError("invalid command")
        if cs == VALUE:
            return (NIL, r) if newline(r) or space(r) else (VALUE, r)
        if cs == PARAM:
            if alpha(r) or r.isdigit() or r == "_":
                return PARAM, r
            if space(r):
                return VALUE, None
            raise ValueError("unexpected EOF")
        if cs == MESSAGE:
            if alpha(r):
                return MESSAGE, r
            if space(r):
                return VALUE, None
            raise ValueError("unexpected EOF")
        return (NIL, None) if newline(r) else (COMMENT, None)

    cmds, curr, b, name, role = [], NIL, [], None, ""
    for ch in text:
        nxt, r = step(ch, curr)
        if nxt != curr:
            if curr == NAME:
                s = "".join(b).lower()
                if s not in valid:
                    raise ValueError(f"invalid command {s!r}")
                if s == "from":
                    name = "model"
                elif s == "parameter":
                    nxt = PARAM
                else:
                    name = s
                    if s == "message":
                        nxt = MESSAGE
            elif curr == PARAM:
                name = "".join(b)
            elif curr == MESSAGE:
                role = "".join(b)
            elif curr == VALUE:
                s, ok = unquote("".join(b).strip())
                if not ok or space(r):
                    b.append(r)
                    continue
                if role:
                    s, role = role + ": " + s, ""
                cmds.append((name, s))
            b, curr = [], nxt
        if r is not None and r.isprintable():
            b.append(r)
    if curr == VALUE:
        s, ok = unquote("".join(b).strip())
        if not ok:
            raise ValueError("unexpected EOF")
        cmds.append((name, role + ": " + s if role else s))
    elif curr not in (NIL, COMMENT):
        raise ValueError("unexpected EOF")
    if not any(c == "model" for c, _ in cmds):
        raise ValueError("no FROM line")
    return cmds


# ------------------------------------------------------------------ the Go-template subset the TEMPLATE uses


def go_render(template: str, messages: list[dict]) -> str:
    """Renders the TEMPLATE as Go's text/template would for Ollama's .Messages: text, if/else if/else/end,
    range $i, $_ := .Messages, $var := / $var =, and eq ne not and or len slice. Anything else fails."""
    assert "{{-" not in template and "-}}" not in template
    parts = re.split(r"({{.*?}})", template, flags=re.S)
    tokens = [("text", p) if not p.startswith("{{") else ("act", p[2:-2].strip()) for p in parts if p]

    def parse_block(i, stop):
        body = []
        while i < len(tokens):
            kind, v = tokens[i]
            if kind == "act" and (v == "end" or v == "else" or v.startswith("else if ")) and stop:
                return body, i
            if kind == "act" and v.startswith("if "):
                branches, i = [], i
                cond = v[3:]
                while True:
                    blk, i = parse_block(i + 1, True)
                    branches.append((cond, blk))
                    k = tokens[i][1]
                    if k == "end":
                        break
                    cond = k[8:] if k.startswith("else if ") else None
                body.append(("if", branches))
            elif kind == "act" and v.startswith("range "):
                m = re.fullmatch(r"range \$(\w+), \$_ := (\S+)", v)
                blk, i = parse_block(i + 1, True)
                assert tokens[i][1] == "end"
                body.append(("range", m.group(1), m.group(2), blk))
            else:
                body.append((kind, v))
            i += 1
        assert not stop, "unterminated block"
        return body, i

    def lex(s):
        return re.findall(r'"(?:\\.|[^"\\])*"|\(|\)|[^\s()]+', s)

    def expr(toks, scopes, dot):
        def atom():
            t = toks.pop(0)
            if t == "(":
                v = call()
                assert toks.pop(0) == ")"
                return v
            if t.startswith('"'):
                return json.loads(t)
            if t.isdigit():
                return int(t)
            if t in ("true", "false"):
                return t == "true"
            if t == "$.Messages":
                return root["Messages"]
            if t.startswith("$"):
                for sc in reversed(scopes):
                    if t[1:] in sc:
                        return sc[t[1:]]
                raise KeyError(t)
            if t.startswith("."):
                return dot[t[1:]]
            raise ValueError(t)

        def call():
            fns = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "not": lambda a: not a,
                   "and": lambda *a: all(a), "or": lambda *a: any(a), "len": len, "slice": lambda a, i: a[i:]}
            if toks[0] in fns:
                fn = fns[toks.pop(0)]
                args = []
                while toks and toks[0] != ")":
                    args.append(atom())
                return fn(*args)
            return atom()

        v = call()
        assert not toks, toks
        return v

    re_assign = re.compile(r"\$(\w+) (:=|=) (.+)", re.S)
    root = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    out = []

    def run(body, scopes, dot):
        for node in body:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "act":
                m = re_assign.fullmatch(node[1])
                if m and m.group(2) == ":=":
                    scopes[-1][m.group(1)] = expr(lex(m.group(3)), scopes, dot)
                elif m:
                    for sc in reversed(scopes):
                        if m.group(1) in sc:
                            sc[m.group(1)] = expr(lex(m.group(3)), scopes, dot)
                            break
                    else:
                        raise KeyError(m.group(1))
                else:
                    out.append(str(expr(lex(node[1]), scopes, dot)))
            elif node[0] == "if":
                for cond, blk in node[1]:
                    if cond is None or expr(lex(cond), scopes, dot):
                        run(blk, scopes + [{}], dot)
                        break
            else:
                _, var, src, blk = node
                for i, item in enumerate(expr(lex(src), scopes, dot)):
                    run(blk, scopes + [{var: i}], item)

    body, _ = parse_block(0, False)
    run(body, [{}], root)
    return "".join(out)


# ------------------------------------------------------------------ families against real templates


@pytest.mark.parametrize("name,family,specials,default,accepts_system", REAL, ids=[r[0] for r in REAL])
def test_real_template_renders_as_its_family_table(name, family, specials, default, accepts_system):
    template = (DATA / name).read_text()
    fam = cf.FAMILY[family]
    bos, eos = specials.get("bos_token", ""), specials.get("eos_token", "")
    table = lambda msgs, gen=True: cf.render(fam, msgs, bos=bos, eos=eos, add_generation_prompt=gen,
                                             default_system=default)
    if accepts_system:
        assert hf_render(template, SAMPLE, specials) == table(SAMPLE)
    else:
        with pytest.raises(Exception, match="roles"):
            hf_render(template, SAMPLE, specials)
    assert hf_render(template, NO_SYSTEM, specials) == table(NO_SYSTEM)
    assert hf_render(template, [USER1], specials) == table([USER1])
    # A chat ending in the assistant's message: Ollama continues that message, as transformers'
    # continue_final_message does.
    prefill = NO_SYSTEM[:2]
    want = hf_render(template, prefill, specials, add_generation_prompt=False, continue_final_message=True)
    assert cf.render_for_ollama(fam, prefill, bos=bos, eos=eos, default_system=default) == want.removeprefix(bos)

    # Detection picks this family, finds the same default system text, and knows whether system is checked.
    match, candidates, why = cf.detect(template, specials)
    assert why is None and match is not None, (candidates, why)
    assert (match.family.name, match.default_system, match.system_checked) == (family, default, accepts_system)


@pytest.mark.parametrize("name,family,specials,default,accepts_system", REAL, ids=[r[0] for r in REAL])
def test_go_template_says_what_the_jinja_template_says(name, family, specials, default, accepts_system):
    template = (DATA / name).read_text()
    fam = cf.FAMILY[family]
    bos, eos = specials.get("bos_token", ""), specials.get("eos_token", "")
    go = go_template(fam, bos=bos, eos=eos, default_system=default)
    chats = [NO_SYSTEM, [USER1], NO_SYSTEM[:2]] + ([SAMPLE, SAMPLE[:2]] if accepts_system else [])
    for chat in chats:
        if chat[-1]["role"] == "assistant":
            want = hf_render(template, chat, specials, add_generation_prompt=False, continue_final_message=True)
        else:
            want = hf_render(template, chat, specials)
        # llama.cpp adds the leading BOS itself, so the Go template leaves it out.
        assert go_render(go, chat) == want.removeprefix(bos), chat


@pytest.mark.parametrize("name,candidates,specials", UNRECOGNISED, ids=[u[0] for u in UNRECOGNISED])
def test_unrecognised_template_gets_no_template_and_a_notice(tmp_path, name, candidates, specials):
    template = (DATA / name).read_text()
    match, found, _ = cf.detect(template, specials)
    assert match is None and [f.name for f in found] == candidates
    text, notices = mf.modelfile("m.gguf", source_dir(tmp_path, template, specials), {})
    cmds = parse_modelfile(text)
    assert "template" not in [c for c, _ in cmds]
    assert any("wrote no TEMPLATE" in n for n in notices)
    assert any("0.30.0" in n and "tokenizer.chat_template" in n for n in notices)
    stops = [v for c, v in cmds if c == "stop"]
    assert specials["eos_token"] in stops
    assert all(s in template or s == specials["eos_token"] for s in stops), stops


def test_template_with_a_family_marker_but_other_format_is_not_forced(tmp_path):
    odd = "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}"
    text, notices = mf.modelfile("m.gguf", source_dir(tmp_path, odd, QWEN), {})
    assert "TEMPLATE" not in text and any("looks like chatml" in n for n in notices)


def test_template_that_does_not_compile_gets_no_template(tmp_path):
    broken = "{% for message in messages %}<|im_start|>{{ message['content'] }<|im_end|>"
    text, notices = mf.modelfile("m.gguf", source_dir(tmp_path, broken, QWEN), {})
    assert "TEMPLATE" not in text and any("could not be rendered" in n for n in notices)


# ------------------------------------------------------------------ the Modelfile


def test_llama31_modelfile_lines(tmp_path):
    src = source_dir(tmp_path, (DATA / "llama-3.1-8b-instruct.jinja").read_text(),
                     {**LLAMA3, "added_tokens_decoder": {"128001": {"content": "<|end_of_text|>"},
                                                         "128008": {"content": "<|eom_id|>"},
                                                         "128009": {"content": "<|eot_id|>"}}},
                     gen={"do_sample": True, "temperature": 0.6, "top_p": 0.9,
                          "eos_token_id": [128001, 128008, 128009]})
    text, notices = mf.modelfile("Llama-3.1-8B-Instruct-Q4_K_M.gguf", src, {"max_position_embeddings": 131072})
    cmds = parse_modelfile(text)
    assert cmds[0] == ("model", "./Llama-3.1-8B-Instruct-Q4_K_M.gguf")
    params = [(c, v) for c, v in cmds if c not in ("model", "template")]
    assert params == [("num_ctx", "8192"), ("temperature", "0.6"), ("top_p", "0.9"),
                      ("stop", "<|start_header_id|>"), ("stop", "<|end_header_id|>"), ("stop", "<|eot_id|>"),
                      ("stop", "<|end_of_text|>"), ("stop", "<|eom_id|>")]
    (template,) = [v for c, v in cmds if c == "template"]
    assert template == go_template(cf.FAMILY["llama3.1"], bos=LLAMA3["bos_token"], eos="<|eot_id|>",
                                      default_system="")
    # The template names tools, so Ollama 0.30+ would prefer the GGUF's own Jinja template.
    assert any("OLLAMA_GO_TEMPLATE" in n for n in notices)
    # One instruction per line; the TEMPLATE is the only value in triple quotes.
    lines = text.splitlines()
    assert lines[0].startswith("#") and lines[1] == "FROM ./Llama-3.1-8B-Instruct-Q4_K_M.gguf"
    assert text.count('"""') == 2 and 'TEMPLATE """' in text


def test_generation_config_parameters(tmp_path):
    gen = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
           "min_p": 0.05}
    src = source_dir(tmp_path, (DATA / "qwen2.5-7b-instruct.jinja").read_text(), QWEN, gen=gen)
    text, _ = mf.modelfile("q.gguf", src, {"max_position_embeddings": 4096})
    params = [(c, v) for c, v in parse_modelfile(text) if c not in ("model", "template", "stop")]
    assert params == [("num_ctx", "4096"), ("temperature", "0.7"), ("top_p", "0.8"), ("top_k", "20"),
                      ("min_p", "0.05"), ("repeat_penalty", "1.05")]
    # Greedy decoding in the source: temperature 0, and a notice.
    src2 = source_dir(tmp_path, "x", QWEN, gen={"do_sample": False, "temperature": 0.7}, name="greedy")
    text, notices = mf.modelfile("q.gguf", src2, {})
    assert ("temperature", "0") in parse_modelfile(text) and any("do_sample" in n for n in notices)


def test_base_model_without_chat_template(tmp_path):
    src = tmp_path / "base"
    src.mkdir()
    (src / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>"}, "bos_token": "<s>"}))
    text, notices = mf.modelfile("base.gguf", src, {"max_position_embeddings": 2048})
    assert parse_modelfile(text) == [("model", "./base.gguf"), ("num_ctx", "2048"), ("stop", "</s>")]
    assert any("no chat template" in n for n in notices)


def test_chat_template_sources_in_tokenizer_config(tmp_path):
    chatml = (DATA / "qwen1.5-72b-chat.jinja").read_text()
    src = tmp_path / "s"
    src.mkdir()
    (src / "tokenizer_config.json").write_text(json.dumps(
        {**QWEN, "chat_template": [{"name": "tool_use", "template": "{{ nope }}"},
                                   {"name": "default", "template": chatml}]}))
    assert read_chat_template(src) == chatml
    (src / "tokenizer_config.json").write_text(json.dumps({**QWEN, "chat_template": chatml}))
    assert read_chat_template(src) == chatml
    (src / "chat_template.jinja").write_text("{{ messages }}")
    assert read_chat_template(src) == "{{ messages }}"


def test_bad_gguf_name():
    with pytest.raises(ValueError):
        mf.modelfile("out/m.gguf", Path("."), {})


def test_tiny_model_modelfile(tiny):
    text, notices = mf.modelfile("tiny-Q8_0.gguf", tiny, json.loads((tiny / "config.json").read_text()))
    assert notices == []
    cmds = parse_modelfile(text)
    assert cmds[0] == ("model", "./tiny-Q8_0.gguf")
    (template,) = [v for c, v in cmds if c == "template"]
    assert template == go_template(cf.FAMILY["chatml"], bos="<s>", eos="</s>")
    assert [(c, v) for c, v in cmds if c not in ("model", "template")] == [
        ("num_ctx", "2048"), ("stop", "<|im_start|>"), ("stop", "<|im_end|>"), ("stop", "</s>")]
    tok = _tokenizer(tiny)
    for chat in (SAMPLE, NO_SYSTEM):
        want = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert go_render(template, chat) == want


def test_smollm2_modelfile(smollm2):
    text, notices = mf.modelfile("SmolLM2-135M-Instruct-Q4_K_M.gguf", smollm2,
                                 json.loads((smollm2 / "config.json").read_text()))
    cmds = parse_modelfile(text)
    (template,) = [v for c, v in cmds if c == "template"]
    tok = _tokenizer(smollm2)
    match, _, _ = cf.detect(read_chat_template(smollm2), {"bos_token": tok.bos_token, "eos_token": tok.eos_token})
    assert match.family.name == "chatml" and match.default_system  # SmolLM2 opens with a system turn of its own
    for chat in (SAMPLE, NO_SYSTEM, [USER1]):
        want = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert go_render(template, chat) == want
    assert ("stop", "<|im_end|>") in cmds and not [n for n in notices if "TEMPLATE" in n]


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


# ------------------------------------------------------------------ real Go, when there is one


@pytest.mark.skipif(shutil.which("go") is None, reason="no Go toolchain on PATH")
def test_go_text_template_agrees(tmp_path):
    """Go's own text/template renders each family's TEMPLATE as the table says (stdlib only, no network)."""
    prog = tmp_path / "main.go"
    prog.write_text(GO_PROGRAM)
    (tmp_path / "go.mod").write_text("module check\n\ngo 1.18\n")
    chats = [SAMPLE, NO_SYSTEM, [USER1], NO_SYSTEM[:2], SAMPLE[:3],
             [SYSTEM, USER1, ASSISTANT1, {"role": "system", "content": "Be brief."}, USER2]]
    cases, want = [], []
    for fam in cf.FAMILIES:
        for default in ([None, "Default.", ""] if fam.system else [None]):
            go = go_template(fam, bos="<s>", eos="</s>", default_system=default)
            for chat in chats:
                cases.append({"template": go, "messages": chat})
                want.append(cf.render_for_ollama(fam, chat, bos="<s>", eos="</s>", default_system=default))
    env = {"GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOTOOLCHAIN": "local", "HOME": str(tmp_path),
           "GOCACHE": str(tmp_path / "cache"), "PATH": os.environ["PATH"]}
    r = subprocess.run(["go", "run", "."], cwd=tmp_path, input=json.dumps(cases), capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    for case, w, g in zip(cases, want, got):
        assert g == w, case
        assert go_render(case["template"], case["messages"]) == w


GO_PROGRAM = r"""
package main

import (
	"bytes"
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	var cases []struct {
		Template string     `json:"template"`
		Messages []*Message `json:"messages"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	var out []string
	for _, c := range cases {
		// As Ollama's template.Parse and Template.Execute do for a template that uses .Messages.
		t := template.Must(template.New("").Option("missingkey=zero").Parse(c.Template))
		var b bytes.Buffer
		data := map[string]any{"System": "", "Messages": c.Messages, "Tools": nil, "Response": ""}
		if err := t.Execute(&b, data); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""
