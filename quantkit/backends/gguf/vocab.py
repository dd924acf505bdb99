"""The tokenizer half of a GGUF file: every `tokenizer.*` key llama.cpp reads, from a Hugging Face folder.

Written on the `gguf` package (key names, writer, `SpecialVocab` for special ids, merges and the
chat template), following what llama.cpp's loader reads (src/llama-vocab.cpp) and what its
converter writes (convert_hf_to_gguf.py), read for this, not copied.

Which tokenizer, as llama.cpp's converter picks it for llama-family models:

- `tokenizer.json` with a byte-level BPE (pre-tokenizer ending in ByteLevel: Llama 3, SmolLM,
  Qwen2, GPT-2) -> tokenizer.ggml.model "gpt2" with tokens, merges and tokenizer.ggml.pre, the name
  llama.cpp maps to its pre-tokenizer regexes (LLAMA_VOCAB_PRE_TYPE_*). llama.cpp's converter finds
  that name by hashing the tokenization of a check string; we read the pre-tokenizer itself from
  tokenizer.json and look its signature up in `PRE_TOKENIZERS`. A signature not in the table is an
  InputError: a wrong name loads fine and then silently splits text differently.
- else `tokenizer.model`, a sentencepiece BPE model -> tokenizer.ggml.model "llama" (Llama 2,
  Mistral v0.x, builtin:tiny-llama): pieces, scores and piece types as sentencepiece stores them.

Token types (tokenizer.ggml.token_type, gguf.TokenType): vocabulary tokens are NORMAL (or their
sentencepiece piece type: BYTE, UNKNOWN, CONTROL, USER_DEFINED, UNUSED); added tokens are CONTROL
when `special`, USER_DEFINED otherwise (llama.cpp splits USER_DEFINED tokens out of text always,
CONTROL ones only with parse_special, and prints CONTROL ones only when rendering special tokens);
ids without a token, up to the embedding rows, are `[PAD{i}]`, UNUSED. The token list always has
exactly `vocab_size` entries, the embedding rows, and every token text once (llama.cpp aborts on a
repeated text).

Special ids: bos/eos/unk/sep/pad from `gguf.SpecialVocab` (tokenizer_config.json's `*_token`
looked up among tokenizer.json's added tokens, then config.json's `*_token_id`; for sentencepiece
then the model's own ids), with EOS chosen as below. add_bos_token and add_eos_token are always
written, because llama.cpp's defaults differ by tokenizer ("llama-bpe" and sentencepiece vocabs add
BOS unless told otherwise); their values are what the transformers tokenizer does when asked for
special tokens, probed on a short string (SpecialVocab's reading when transformers cannot load it).

EOS: generation_config.json's `eos_token_id` is what ends generation in transformers, and may be a
list (Llama 3.1 Instruct: [128001, 128008, 128009]). gguf's SpecialVocab never reads
generation_config.json and skips a list in config.json, so a Llama 3 Instruct folder whose
tokenizer_config.json names <|end_of_text|> gets that as EOS although a chat turn ends with
<|eot_id|>. We write as EOS: generation_config's id when it lists one; when it lists several, the
first whose text ends a chat turn (`TURN_END_TEXTS`: <|eot_id|> 128009 for Llama 3), else the
tokenizer's EOS if listed, else the first listed; the tokenizer's EOS when generation_config has
none. llama.cpp stops generation at EOS and at every token whose text is in its own list
(`LLAMA_CPP_EOG_TEXTS`: <|eot_id|>, <|eom_id|>, <|end_of_text|>, <|im_end|>, ...), so the other
listed ids still stop it; a notice names any listed id that would not.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import gguf

from quantkit.errors import InputError
from quantkit.jsonfile import UnreadableJSON, read_json
from quantkit.libs import quiet_gguf

T = gguf.TokenType

# -- pre-tokenizers ----------------------------------------------------------------------------
#
# A signature is tokenizer.json's `pre_tokenizer` reduced to what decides where text is split
# (Sequence flattened; offsets-only settings such as trim_offsets dropped):
#   ("Split", (pattern kind, pattern), behavior, invert)   kind: "Regex" or "String"
#   ("Digits", individual_digits)
#   ("ByteLevel", add_prefix_space, use_regex)
# Each entry carries llama.cpp's regexes for that name (llm_tokenizer_bpe in llama-vocab.cpp) for
# comparison: llama.cpp spells `(?i:'s|...)` as explicit case classes, and its GPT-2 regex stands
# for ByteLevel's built-in one, `...|\s+(?!\S)|\s+` (unicode.cpp, unicode_regex_split_custom_gpt2).
# Checked: for each entry, a tokenizer.json rebuilt from the real vocabulary in llama.cpp's
# models/ggml-vocab-<name>.gguf (smollm: starcoder's, which splits the same way) with this
# signature's pre_tokenizer encodes llama.cpp's 46 vocab test strings exactly as the model's own
# Hugging Face tokenizer did (models/ggml-vocab-<name>.gguf.out), and llama.cpp with our GGUF of it
# agrees on them and on quantkit's evaluation text; tests/test_gguf_vocab.py checks each entry
# against llama.cpp on tokenizers it trains.

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_CPP_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_CPP_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"


@dataclass(frozen=True)
class PreTokenizer:
    name: str  # tokenizer.ggml.pre
    steps: tuple  # the signature
    ignore_merges: bool  # what llama.cpp does for this name (tokenizer.json: model.ignore_merges)
    llama_cpp_regexes: tuple[str, ...]  # regex_exprs for this name in llama-vocab.cpp
    models: str


PRE_TOKENIZERS: tuple[PreTokenizer, ...] = (
    PreTokenizer(
        "llama-bpe",
        (("Split", ("Regex", LLAMA3_REGEX), "Isolated", False), ("ByteLevel", False, False)),
        True,
        (_CPP_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
        "Llama 3, 3.1, 3.2, 3.3 (LLAMA_VOCAB_PRE_TYPE_LLAMA3)",
    ),
    PreTokenizer(
        "qwen2",
        (("Split", ("Regex", QWEN2_REGEX), "Isolated", False), ("ByteLevel", False, False)),
        False,
        (_CPP_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
        "Qwen1.5, Qwen2, Qwen2.5, Qwen3 (LLAMA_VOCAB_PRE_TYPE_QWEN2)",
    ),
    PreTokenizer(
        "smollm",
        (("Digits", True), ("ByteLevel", False, True)),
        False,
        (r"\p{N}", _CPP_GPT2),
        "SmolLM, SmolLM2; StarCoder2 splits the same way (LLAMA_VOCAB_PRE_TYPE_SMOLLM)",
    ),
    PreTokenizer(
        "gpt-2",
        (("ByteLevel", False, True),),
        False,
        (_CPP_GPT2,),
        "GPT-2 and other plain ByteLevel BPEs (LLAMA_VOCAB_PRE_TYPE_GPT2)",
    ),
)

# tokenizer.json normalizers on a byte-level BPE that llama.cpp does not apply: tolerated, with a notice.
BPE_NORMALIZERS_IGNORED = {
    "NFC": "tokenizer.json normalizes text to NFC and llama.cpp does not; text not already in NFC may tokenize differently",
}
# tokenizer.json normalizers on a sentencepiece tokenizer that llama.cpp's add_space_prefix covers.
SPM_NORMALIZERS_COVERED = {"Prepend", "Replace"}

# -- special tokens ----------------------------------------------------------------------------

SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad")
# Token texts that end a chat turn: preferred as EOS when generation_config lists several ids.
TURN_END_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")
# Token texts llama.cpp itself ends generation at (llama-vocab.cpp, special_eog_ids).
LLAMA_CPP_EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
})

# -- sentencepiece -----------------------------------------------------------------------------

# sentencepiece ModelProto.SentencePiece.Type -> GGUF token type (the numbers agree).
SPM_PIECE_TYPES = {1: T.NORMAL, 2: T.UNKNOWN, 3: T.CONTROL, 4: T.USER_DEFINED, 5: T.UNUSED, 6: T.BYTE}
SPM_MODEL_TYPES = {1: "unigram", 2: "BPE", 3: "word", 4: "char"}  # TrainerSpec.model_type
SPM_BPE = 2  # llama.cpp's "llama" tokenizer merges by score, as sentencepiece BPE does
ADDED_TOKEN_SCORE = -1000.0  # added tokens in a sentencepiece vocab
PAD_SCORE = -10000.0  # [PAD{i}] filler
SPACE = "\u2581"  # sentencepiece's visible space


def add_vocab(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> list[str]:
    """Add every tokenizer.* key for the tokenizer in model_dir to writer, with exactly
    vocab_size tokens (the embedding rows). Returns notices for the user."""
    v = _build(Path(model_dir), vocab_size)
    v.write(writer)
    return v.notices


class Bos(NamedTuple):
    added: bool  # llama.cpp puts BOS first when it tokenizes (tokenizer.ggml.add_bos_token)
    token_id: int | None


def add_bos(model_dir: Path, vocab_size: int) -> Bos:
    """Whether llama.cpp adds BOS with the vocab add_vocab writes, and that BOS id: the one answer
    for every use (the GGUF's keys, llama-imatrix's chunks)."""
    v = _build(Path(model_dir), vocab_size)
    return Bos(v.add_bos, v.special.get("bos"))


# -- the vocabulary being built ----------------------------------------------------------------


@dataclass
class _Vocab:
    model: str
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str] | None
    special: dict[str, int]
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    chat_template: object
    notices: list[str]

    def write(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types([int(t) for t in self.types])
        if self.scores is not None:
            w.add_token_scores(self.scores)
        if self.merges is not None:
            w.add_token_merges(self.merges)
        for typ, tid in self.special.items():
            getattr(w, f"add_{typ}_token_id")(tid)
        w.add_add_bos_token(self.add_bos)
        w.add_add_eos_token(self.add_eos)
        w.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            w.add_chat_template(self.chat_template)


# Files whose content decides the vocabulary: a rebuild when any changed.
SOURCE_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "config.json", "generation_config.json",
                "added_tokens.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json")
_built: dict[tuple, _Vocab] = {}


def _build(model_dir: Path, vocab_size: int) -> _Vocab:
    """The vocabulary for model_dir, built once per process (one GGUF per quantization type asks again)."""
    stamps = tuple((f, p.stat().st_mtime_ns, p.stat().st_size) for f in SOURCE_FILES if (p := model_dir / f).is_file())
    key = (str(model_dir.resolve()), vocab_size, stamps)
    if key not in _built:
        if len(_built) >= 4:
            _built.clear()
        _built[key] = _make(model_dir, vocab_size)
    v = _built[key]
    return replace(v, notices=list(v.notices))


def _make(model_dir: Path, vocab_size: int) -> _Vocab:
    tj = _read_json(model_dir / "tokenizer.json")
    if tj is not None and _is_byte_level_bpe(tj):
        return _bpe_vocab(model_dir, tj, vocab_size)
    if (model_dir / "tokenizer.model").is_file():
        return _spm_vocab(model_dir, tj, vocab_size)
    if tj is not None:
        kind = (tj.get("model") or {}).get("type")
        raise InputError(f"{model_dir / 'tokenizer.json'}: a {kind} tokenizer that is not byte-level BPE, and no "
                         "tokenizer.model; GGUF conversion supports byte-level BPE and sentencepiece BPE tokenizers")
    raise InputError(f"{model_dir}: no tokenizer.json or tokenizer.model; add the model's tokenizer files to the folder")


def _read_json(path: Path):
    try:
        return read_json(path)
    except UnreadableJSON as e:
        raise InputError(f"{path} is not valid JSON ({e.reason}); restore it from the model's repository") from None


def _is_byte_level_bpe(tj: dict) -> bool:
    return (tj.get("model") or {}).get("type") == "BPE" and any(s[0] == "ByteLevel" for s in _steps(tj.get("pre_tokenizer")))


def _steps(node) -> tuple:
    """tokenizer.json pre_tokenizer -> signature (see PRE_TOKENIZERS)."""
    if node is None:
        return ()
    kind = node.get("type")
    if kind == "Sequence":
        return tuple(s for child in node.get("pretokenizers", []) for s in _steps(child))
    if kind == "Split":
        pattern = node.get("pattern") or {}
        key = next(iter(pattern), None) if len(pattern) == 1 else None
        pat = (key, pattern[key]) if key else ("?", json.dumps(pattern, sort_keys=True))
        return (("Split", pat, node.get("behavior"), bool(node.get("invert", False))),)
    if kind == "Digits":
        return (("Digits", bool(node.get("individual_digits", False))),)
    if kind == "ByteLevel":
        return (("ByteLevel", bool(node.get("add_prefix_space", True)), bool(node.get("use_regex", True))),)
    return ((kind, json.dumps({k: v for k, v in node.items() if k != "type"}, sort_keys=True)),)


def pre_tokenizer_name(tj: dict, where: str = "tokenizer.json") -> tuple[str, list[str]]:
    """(tokenizer.ggml.pre, notices) for a byte-level BPE tokenizer.json; InputError when unknown."""
    steps = _steps(tj.get("pre_tokenizer"))
    entry = next((e for e in PRE_TOKENIZERS if e.steps == steps), None)
    if entry is None:
        shown = json.dumps(tj.get("pre_tokenizer"), ensure_ascii=False, separators=(",", ":"))
        shown = shown if len(shown) <= 300 else shown[:300] + "..."
        raise InputError(f"{where}: pre-tokenizer unknown to quantkit ({shown}); a wrong tokenizer.ggml.pre would "
                         "tokenize differently, so add its signature to PRE_TOKENIZERS in quantkit/backends/gguf/vocab.py")
    notices = []
    ignore_merges = bool((tj.get("model") or {}).get("ignore_merges", False))
    if ignore_merges != entry.ignore_merges:
        notices.append(f"tokenizer.json has ignore_merges={ignore_merges} but llama.cpp's '{entry.name}' tokenizer "
                       f"works with ignore_merges={entry.ignore_merges}; a few words may tokenize differently")
    return entry.name, notices


# -- byte-level BPE (tokenizer.json) -----------------------------------------------------------


def _bpe_vocab(model_dir: Path, tj: dict, vocab_size: int) -> _Vocab:
    where = str(model_dir / "tokenizer.json")
    model = tj["model"]
    for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(key):
            raise InputError(f"{where}: BPE with {key}={model[key]!r}, which llama.cpp does not implement; "
                             "GGUF conversion supports plain byte-level BPE")
    pre, notices = pre_tokenizer_name(tj, where)
    notices += _bpe_normalizer_notices(tj.get("normalizer"), where)

    id_to_text = {int(i): text for text, i in model["vocab"].items()}
    added = {int(a["id"]): a for a in tj.get("added_tokens") or []}
    id_to_text.update({i: a["content"] for i, a in added.items()})
    _check_range(id_to_text, vocab_size, where)
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in id_to_text:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
        else:
            tokens.append(id_to_text[i])
            types.append((T.CONTROL if added[i].get("special") else T.USER_DEFINED) if i in added else T.NORMAL)
    notices += _added_token_notices(added.values())
    _check_unique(tokens, where)

    sv = _special_vocab(model_dir, vocab_size, load_merges=True)
    if not sv.merges:
        raise InputError(f"{where}: BPE without merges; llama.cpp cannot load a byte-level BPE vocabulary without them")
    probe = _probe(model_dir)
    special, add_bos_, add_eos_ = _special(model_dir, sv, tokens, probe, notices, default_add_bos=False)
    return _Vocab("gpt2", pre, tokens, types, None, list(sv.merges), special, add_bos_, add_eos_, False,
                  sv.chat_template, notices)


def _bpe_normalizer_notices(node, where: str) -> list[str]:
    notices = []
    for kind in _normalizer_kinds(node):
        if kind not in BPE_NORMALIZERS_IGNORED:
            raise InputError(f"{where}: normalizer {kind} on a byte-level BPE, which llama.cpp does not apply; "
                             "GGUF conversion would tokenize differently")
        notices.append(BPE_NORMALIZERS_IGNORED[kind])
    return notices


def _normalizer_kinds(node) -> list[str]:
    if node is None:
        return []
    if node.get("type") == "Sequence":
        return [k for n in node.get("normalizers", []) for k in _normalizer_kinds(n)]
    return [node.get("type")]


def _added_token_notices(added) -> list[str]:
    odd = [a["content"] for a in added if a.get("lstrip") or a.get("rstrip") or a.get("single_word")]
    if not odd:
        return []
    shown = ", ".join(odd[:5]) + (", ..." if len(odd) > 5 else "")
    return [f"added tokens with lstrip/rstrip/single_word ({shown}): llama.cpp ignores these flags, "
            "so spaces next to them may tokenize differently"]


# -- sentencepiece (tokenizer.model) -----------------------------------------------------------


def _spm_vocab(model_dir: Path, tj: dict | None, vocab_size: int) -> _Vocab:
    path = model_dir / "tokenizer.model"
    proto = _spm_proto(path)
    ts, norm = proto.trainer_spec, proto.normalizer_spec
    if ts.model_type != SPM_BPE:
        raise InputError(f"{path}: a sentencepiece {SPM_MODEL_TYPES.get(ts.model_type, 'unknown')} model; "
                         "llama.cpp's sentencepiece tokenizer reproduces BPE models only")
    if ts.treat_whitespace_as_suffix:
        raise InputError(f"{path}: treat_whitespace_as_suffix is set, which llama.cpp's sentencepiece tokenizer does not do")
    n = len(proto.pieces)
    if n > vocab_size:
        raise InputError(f"{path}: {n} pieces but the model has {vocab_size} embedding rows; "
                         "the tokenizer does not belong to this checkpoint")
    notices: list[str] = []
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [PAD_SCORE] * vocab_size
    types = [T.UNUSED] * vocab_size
    for i, p in enumerate(proto.pieces):
        tokens[i], scores[i], types[i] = p.piece, float(p.score), SPM_PIECE_TYPES.get(p.type, T.NORMAL)
    added = _spm_added_tokens(model_dir, tj)
    _check_range({i: a["content"] for i, a in added.items()}, vocab_size, str(model_dir / "tokenizer.json"))
    for i, a in added.items():
        if i < n and tokens[i] == a["content"]:  # a sentencepiece piece the transformers tokenizer also adds
            if a.get("special") and types[i] != T.UNKNOWN:
                types[i] = T.CONTROL
            elif not a.get("special") and types[i] == T.NORMAL:
                types[i] = T.USER_DEFINED
            continue
        tokens[i], scores[i] = a["content"], ADDED_TOKEN_SCORE
        types[i] = T.CONTROL if a.get("special") else T.USER_DEFINED
    notices += _added_token_notices(added.values())
    _check_unique(tokens, str(path))

    if tj is not None:
        odd = [k for k in _normalizer_kinds(tj.get("normalizer")) if k not in SPM_NORMALIZERS_COVERED]
        if odd:
            notices.append(f"tokenizer.json normalizes text ({', '.join(odd)}) and llama.cpp's sentencepiece "
                           "tokenizer does not; text the normalizer changes may tokenize differently")
    elif norm.name not in ("identity", ""):
        notices.append(f"tokenizer.model normalizes text ({norm.name}) and llama.cpp's sentencepiece tokenizer "
                       "does not; text the normalizer changes may tokenize differently")

    sv = _special_vocab(model_dir, vocab_size, load_merges=False)
    for typ, tid in (("bos", ts.bos_id), ("eos", ts.eos_id), ("unk", ts.unk_id), ("pad", ts.pad_id)):
        if tid >= 0:
            sv._set_special_token(typ, tid)  # only where tokenizer_config.json and config.json named none
    probe = _probe(model_dir)
    special, add_bos_, add_eos_ = _special(model_dir, sv, tokens, probe, notices, default_add_bos=True)
    if probe is not None:
        add_space_prefix = probe.space_prefix
        if add_space_prefix and probe.space_after_special is False:
            notices.append("the transformers tokenizer puts no space before text that follows a special token "
                           "(legacy=False) and llama.cpp does: prompts with special tokens tokenize differently there")
        if add_space_prefix and not probe.space_doubled:
            notices.append("the transformers tokenizer adds no space before text that starts with one and llama.cpp "
                           "does: such text tokenizes differently at its start")
    else:
        cfg = _read_json(model_dir / "tokenizer_config.json") or {}
        prefix = cfg.get("add_prefix_space")
        add_space_prefix = prefix if isinstance(prefix, bool) else bool(norm.add_dummy_prefix)
    return _Vocab("llama", "default", tokens, types, scores, None, special, add_bos_, add_eos_, add_space_prefix,
                  sv.chat_template, notices)


def _spm_proto(path: Path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception:  # protobuf's DecodeError and relatives
        proto = None
    if proto is None or not proto.pieces:
        raise InputError(f"{path} is not a sentencepiece model; restore it from the model's repository")
    return proto


def _spm_added_tokens(model_dir: Path, tj: dict | None) -> dict[int, dict]:
    """Tokens the transformers tokenizer adds on top of sentencepiece: tokenizer.json's added_tokens,
    else tokenizer_config.json's added_tokens_decoder and added_tokens.json."""
    if tj is not None:
        return {int(a["id"]): a for a in tj.get("added_tokens") or []}
    cfg = _read_json(model_dir / "tokenizer_config.json") or {}
    out = {int(i): dict(a) for i, a in (cfg.get("added_tokens_decoder") or {}).items()}
    for content, i in (_read_json(model_dir / "added_tokens.json") or {}).items():
        out.setdefault(int(i), {"content": content, "special": False})
    return out


# -- shared ------------------------------------------------------------------------------------


def _check_range(id_to_text: dict[int, str], vocab_size: int, where: str) -> None:
    if id_to_text and max(id_to_text) >= vocab_size:
        top = max(id_to_text)
        raise InputError(f"{where}: token {id_to_text[top]!r} has id {top} but the model has {vocab_size} "
                         "embedding rows; the tokenizer does not belong to this checkpoint")


def _check_unique(tokens: list[str], where: str) -> None:
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in seen:
            raise InputError(f"{where}: token text {t!r} appears twice (ids {seen[t]} and {i}), which llama.cpp "
                             "cannot load; give the added token a text of its own")
        seen[t] = i


def _special_vocab(model_dir: Path, vocab_size: int, load_merges: bool) -> gguf.SpecialVocab:
    with quiet_gguf():  # it warns about post-processor shapes it half-understands; we decide add_bos ourselves
        return gguf.SpecialVocab(model_dir, load_merges=load_merges, n_vocab=vocab_size, special_token_types=SPECIAL_TYPES)


def _special(model_dir: Path, sv: gguf.SpecialVocab, tokens: list[str], probe, notices: list[str],
             default_add_bos: bool) -> tuple[dict[str, int], bool, bool]:
    """(special ids by type, add_bos, add_eos)."""
    special = {t: sv.special_token_ids[t] for t in SPECIAL_TYPES if t in sv.special_token_ids}
    eos = _choose_eos(model_dir, special.get("eos"), tokens, notices)
    if eos is not None:
        special["eos"] = eos
    if probe is not None:
        add_bos_, add_eos_ = probe.adds_bos, probe.adds_eos
    else:
        add_bos_ = sv.add_special_token.get("bos", default_add_bos)
        add_eos_ = sv.add_special_token.get("eos", False)
    if add_bos_ and "bos" not in special:
        raise InputError(f"{model_dir}: the tokenizer adds a BOS token but names none; set bos_token in tokenizer_config.json")
    if add_eos_ and "eos" not in special:
        raise InputError(f"{model_dir}: the tokenizer adds an EOS token but names none; set eos_token in tokenizer_config.json")
    return special, bool(add_bos_), bool(add_eos_)


def _choose_eos(model_dir: Path, eos: int | None, tokens: list[str], notices: list[str]) -> int | None:
    """The EOS id to write; see the module docstring."""
    listed = (_read_json(model_dir / "generation_config.json") or {}).get("eos_token_id")
    listed = [listed] if isinstance(listed, int) else [i for i in (listed or []) if isinstance(i, int)]
    listed = [i for i in listed if 0 <= i < len(tokens)]
    if not listed:
        return eos
    if len(listed) == 1:
        chosen = listed[0]
    else:
        turn = [i for i in listed if tokens[i] in TURN_END_TEXTS]
        chosen = turn[0] if turn else (eos if eos in listed else listed[0])
    if eos is not None and chosen != eos:
        notices.append(f"EOS is {tokens[chosen]!r} ({chosen}), where generation_config.json ends generation, "
                       f"not the tokenizer's {tokens[eos]!r} ({eos})")
    missed = [i for i in listed if i != chosen and tokens[i] not in LLAMA_CPP_EOG_TEXTS]
    if missed:
        notices.append("generation_config.json also ends generation at " + ", ".join(f"{tokens[i]!r} ({i})" for i in missed)
                       + ", where llama.cpp does not stop")
    return chosen


@dataclass
class _Probe:
    """What the transformers tokenizer does, seen on short strings."""
    adds_bos: bool  # tokenizer("a") starts with BOS
    adds_eos: bool  # tokenizer("a") ends with EOS
    space_prefix: bool  # "a" -> "▁a"
    space_after_special: bool | None  # "<s>a" -> "<s>", "▁a" (None: no special token to try)
    space_doubled: bool  # " a" -> "▁", "▁a", as sentencepiece's add_dummy_prefix and llama.cpp do


def _probe(model_dir: Path) -> _Probe | None:
    """None when transformers cannot load the tokenizer offline (remote code, missing files)."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception:  # transformers raises many kinds here
        return None

    def ids(text: str, special: bool = False) -> list[int]:
        return list(tok(text, add_special_tokens=special)["input_ids"])

    def pieces(text: str) -> list[str]:
        return tok.convert_ids_to_tokens(ids(text))

    plain, full = ids("a"), ids("a", special=True)
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), None)
    if start is None:
        return None
    head, tail = full[:start], full[start + len(plain):]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    a = pieces("a")
    mark = next((t for t in (tok.bos_token, tok.eos_token, tok.unk_token) if isinstance(t, str) and t), None)
    after = pieces(mark + "a")[1:] if mark else []
    return _Probe(
        adds_bos=bos is not None and head == [bos],
        adds_eos=eos is not None and tail == [eos],
        space_prefix=bool(a) and a[0].startswith(SPACE),
        space_after_special=(bool(after) and after[0].startswith(SPACE)) if mark else None,
        space_doubled=pieces(" a") != a,
    )
