"""The GGUF tokenizer keys (quantkit/backends/gguf/vocab.py), proven against llama.cpp's own tokenizer.

Each test writes a GGUF holding only general.architecture and our tokenizer.* keys (llama.cpp's
loader reads no hyperparameters and no tensors for a vocab_only load), loads it with
llama-cpp-python, and compares token ids with the transformers tokenizer of the same folder.
"""
from __future__ import annotations

import json
import shutil
from contextlib import closing
from pathlib import Path

import gguf
import pytest

from quantkit.backends.gguf import llamacpp, vocab
from quantkit.errors import InputError
from quantkit.text import default_text

llama_cpp = pytest.importorskip("llama_cpp")

# pre_tokenizer blocks as they appear in the models' own tokenizer.json files
PRE_JSON = {
    # meta-llama/Llama-3.1-8B-Instruct, Llama-3.2-1B-Instruct
    "llama-bpe": r'''{"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}''',
    # Qwen/Qwen2.5-0.5B-Instruct
    "qwen2": r'''{"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]}''',
    # HuggingFaceTB/SmolLM2-135M-Instruct
    "smollm": r'''{"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]}''',
    # openai-community/gpt2
    "gpt-2": r'''{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}''',
}
NORMALIZER = {"qwen2": {"type": "NFC"}}
IGNORE_MERGES = {"llama-bpe": True}
# Strings where pre-tokenizers disagree: digit runs, contractions in any case, whitespace runs before
# words, digits and line ends, tabs, non-Latin scripts, emoji.
PROBE = (
    "3 33 333 3333 33333 333333 3333333 3.3 3..3 1,000,000 in 1564 and 1616\n"
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL\n"
    "  indented\n    four  spaces   then 42, width  42\n\n\n\ttab\t\ttabs \t\n \n  \nend   \n"
    "нещо на Български, 我想在apple工作1314151天～ Cửa Việt 🦙🦙 ✅ (normal) ------======= ''''''```````\"\"\"\"......!!!!!!??????\n"
)
CHAT = "<|im_start|>user\nWho wrote Hamlet in 1600?<|im_end|>\n<|im_start|>assistant\n"


def write_gguf(model_dir: Path, path: Path, vocab_size: int | None = None, pre: str | None = None) -> list[str]:
    """A vocab-only GGUF: general.architecture plus our tokenizer keys (pre: force tokenizer.ggml.pre)."""
    n = vocab_size or json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    w = gguf.GGUFWriter(str(path), "llama")
    if pre is None:
        notices = vocab.add_vocab(w, model_dir, n)
    else:
        v = vocab._build(Path(model_dir), n)
        v.pre, notices = pre, v.notices
        v.write(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return notices


def load(path: Path):
    return closing(llamacpp.open_llama(path, vocab_only=True, verbose=False))


def hf_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def fields(path: Path) -> dict:
    """The tokenizer.* keys of a GGUF file, as Python values."""
    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items() if k.startswith("tokenizer.")}


def assert_same_ids(hf: list[int], lc: list[int], what: str) -> None:
    if hf != lc:
        k = next((i for i, (a, b) in enumerate(zip(hf, lc)) if a != b), min(len(hf), len(lc)))
        raise AssertionError(f"{what}: llama.cpp differs from transformers at token {k} of {len(hf)}: "
                             f"{lc[max(0, k - 3):k + 4]} vs {hf[max(0, k - 3):k + 4]}")


def check_against_llama_cpp(model_dir: Path, gguf_path: Path, specials: str | None = None) -> int:
    """Eval text (BOS as transformers adds it), PROBE, optionally a string with special tokens
    (parse_special), and the detokenized round trip. Returns the number of eval-text ids compared."""
    tok = hf_tokenizer(model_dir)
    text = default_text("evaluation")
    with load(gguf_path) as llm:
        hf = tok(text)["input_ids"]
        lc = llm.tokenize(text.encode(), add_bos=True, special=False)
        assert_same_ids(hf, lc, "evaluation text")
        assert llm.detokenize(lc) == text.encode()
        assert_same_ids(tok(PROBE)["input_ids"], llm.tokenize(PROBE.encode(), add_bos=True, special=False), "probe")
        if specials is not None:
            ids = llm.tokenize(specials.encode(), add_bos=True, special=True)
            assert_same_ids(tok(specials)["input_ids"], ids, "special tokens")
            n_bos = len(llm.tokenize(b"", add_bos=True, special=False))
            assert llm.detokenize(ids[n_bos:], special=True) == specials.encode()
    return len(hf)


# -- SmolLM2 (byte-level BPE) ------------------------------------------------------------------


def smollm2_tokenizer_copy(src: Path, dst: Path) -> Path:
    """The folder's tokenizer and config files, without the weights."""
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix in (".json", ".jinja", ".model"):
            shutil.copy(f, dst / f.name)
    return dst


@pytest.fixture(scope="module")
def smollm2_vocab(smollm2, tmp_path_factory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("smollm2") / "v.gguf"
    return path, write_gguf(smollm2, path)


@pytest.mark.slow
def test_smollm2_tokenizes_as_transformers(smollm2, smollm2_vocab):
    path, notices = smollm2_vocab
    # builtin:smollm2's tokenizer_config.json names <|im_start|> as EOS (transformers' GGUF import swaps them)
    assert notices == ["EOS is '<|im_end|>' (2), where generation_config.json ends generation, not the tokenizer's '<|im_start|>' (1)"]
    n = check_against_llama_cpp(smollm2, path, specials=CHAT)
    assert n == 88000


@pytest.mark.slow
def test_smollm2_keys_match_llama_cpp_converter(smollm2, smollm2_vocab, tmp_path):
    """Against the GGUF llama.cpp's converter wrote from the real SmolLM2 repository."""
    from quantkit.fixtures import smollm2_gguf

    ref = fields(smollm2_gguf())
    ours = fields(smollm2_vocab[0])
    same = ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
            "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix",
            "tokenizer.chat_template"]
    for k in same:
        assert ours[k] == ref[k], k
    assert set(ours) - set(ref) == {"tokenizer.ggml.add_eos_token"} and ours["tokenizer.ggml.add_eos_token"] is False
    # builtin:smollm2's tokenizer.json was rebuilt by transformers from that GGUF with a plain
    # ByteLevel pre-tokenizer (no Digits step), so it is a GPT-2-style tokenizer now ...
    assert ref["tokenizer.ggml.pre"] == "smollm" and ours["tokenizer.ggml.pre"] == "gpt-2"
    # ... and with the repository's own pre-tokenizer restored we write what llama.cpp wrote
    restored = smollm2_tokenizer_copy(smollm2, tmp_path / "restored")
    tj = json.loads((restored / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = json.loads(PRE_JSON["smollm"])
    (restored / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    write_gguf(restored, tmp_path / "restored.gguf")
    with load(tmp_path / "restored.gguf") as llm:
        assert llm.metadata["tokenizer.ggml.pre"] == "smollm"
    check_against_llama_cpp(restored, tmp_path / "restored.gguf", specials=CHAT)


# -- tiny-llama (sentencepiece) ----------------------------------------------------------------


def test_tiny_llama_tokenizes_as_transformers(tiny, tmp_path):
    path = tmp_path / "v.gguf"
    notices = write_gguf(tiny, path)
    n = check_against_llama_cpp(tiny, path)
    assert n == 144562
    f = fields(path)
    assert f["tokenizer.ggml.model"] == "llama" and len(f["tokenizer.ggml.tokens"]) == 1024
    types = f["tokenizer.ggml.token_type"]
    assert types[:5] == [2, 3, 3, 4, 4]  # <unk>, <s>, </s>, then <|im_start|> <|im_end|>: sentencepiece user-defined
    assert types[5:5 + 256] == [6] * 256 and f["tokenizer.ggml.tokens"][5 + 10] == "<0x0A>"
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.add_space_prefix"] is True
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"], f["tokenizer.ggml.unknown_token_id"]) == (1, 2, 0)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny / "tokenizer.model"))
    assert f["tokenizer.ggml.scores"] == pytest.approx([sp.GetScore(i) for i in range(sp.GetPieceSize())])
    # llama.cpp's sentencepiece tokenizer puts a space before text after every special token, as
    # sentencepiece and legacy transformers do; this tokenizer (legacy=False) does not: a notice says so,
    # and llama.cpp tokenizes each piece of text between special tokens as if it started the prompt
    assert any("follows a special token" in x for x in notices)
    tok = hf_tokenizer(tiny)
    parts = [p for p in CHAT.replace("<|im_end|>", "\0<|im_end|>\0").replace("<|im_start|>", "\0<|im_start|>\0").split("\0") if p]
    expected = [tok.bos_token_id] + [i for p in parts for i in tok(p, add_special_tokens=False)["input_ids"]]
    with load(path) as llm:
        ids = llm.tokenize(CHAT.encode(), add_bos=True, special=True)
        assert ids == expected and ids.count(3) == 2 and ids.count(4) == 1
        assert ids != tok(CHAT)["input_ids"]
        spaced = "".join(p if p.startswith("<|") else " " + p for p in parts)
        assert llm.detokenize(ids[1:], special=True) == spaced.encode()


# -- pre-tokenizer table, on tokenizers trained here -------------------------------------------


def trained_tokenizer(folder: Path, pre_json: str, *, normalizer=None, ignore_merges=False, llama3_specials=False) -> Path:
    """A byte-level BPE (2000 tokens) trained on the calibration text with the given pre_tokenizer,
    saved as a Hugging Face tokenizer folder. llama3_specials: Llama 3's special tokens, BOS
    post-processor and generation_config."""
    from tokenizers import AddedToken, Tokenizer, pre_tokenizers, trainers

    skeleton = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": normalizer,
        "pre_tokenizer": json.loads(pre_json), "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": {}, "merges": []},
    }
    tok = Tokenizer.from_str(json.dumps(skeleton))
    numbers = " ".join(str(1500 + 7 * i) for i in range(300)) + "  42  333\n"
    text = default_text("calibration")[:300_000] + numbers * 20
    tok.train_from_iterator(text.splitlines(True), trainers.BpeTrainer(
        vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    names = (["<|begin_of_text|>", "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"] if llama3_specials
             else ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in names])
    tj = json.loads(tok.to_str())
    ids = {t: tok.token_to_id(t) for t in names}
    folder.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "transformers_version": "5.17.0",
              "vocab_size": 2048}
    tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    if llama3_specials:
        bos = "<|begin_of_text|>"
        tj["post_processor"] = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {bos: {"id": bos, "ids": [ids[bos]], "tokens": [bos]}}}]}
        # tokenizer_config.json naming <|end_of_text|>, as Meta-Llama-3-8B-Instruct's first release did
        tcfg.update(bos_token=bos, eos_token="<|end_of_text|>")
        config.update(bos_token_id=ids[bos], eos_token_id=ids["<|end_of_text|>"])
        (folder / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": ids[bos], "eos_token_id": [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]]}))
    else:
        tcfg.update(bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>")
    (folder / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(tcfg))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("name", [e.name for e in vocab.PRE_TOKENIZERS])
def test_pre_tokenizer_table_entry_tokenizes_as_transformers(name, tmp_path):
    """Each table entry: a tokenizer.json with that model family's pre_tokenizer gets the entry's
    name, and llama.cpp then tokenizes as transformers does; with any other name it does not."""
    assert set(PRE_JSON) == {e.name for e in vocab.PRE_TOKENIZERS}
    folder = trained_tokenizer(tmp_path / "tok", PRE_JSON[name], normalizer=NORMALIZER.get(name),
                               ignore_merges=IGNORE_MERGES.get(name, False), llama3_specials=name == "llama-bpe")
    path = tmp_path / "v.gguf"
    notices = write_gguf(folder, path)
    f = fields(path)
    assert f["tokenizer.ggml.pre"] == name and f["tokenizer.ggml.model"] == "gpt2"
    assert len(f["tokenizer.ggml.tokens"]) == 2048 and f["tokenizer.ggml.tokens"][-1] == "[PAD2047]"
    assert f["tokenizer.ggml.token_type"][1999:2001] == [1, 3] and f["tokenizer.ggml.token_type"][-1] == 5
    check_against_llama_cpp(folder, path, specials=CHAT)
    with load(path) as llm:
        assert llm.n_vocab() == 2048
    if name == "qwen2":
        assert notices == [vocab.BPE_NORMALIZERS_IGNORED["NFC"]]
    if name == "llama-bpe":
        # BOS added as the post-processor says; EOS the end of a chat turn from generation_config.json
        assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.bos_token_id"] == 2000
        assert f["tokenizer.ggml.eos_token_id"] == 2003 and f["tokenizer.ggml.tokens"][2003] == "<|eot_id|>"
        assert notices == ["EOS is '<|eot_id|>' (2003), where generation_config.json ends generation, "
                           "not the tokenizer's '<|end_of_text|>' (2001)"]
    else:
        assert f["tokenizer.ggml.add_bos_token"] is False
    tok = hf_tokenizer(folder)
    text = PROBE + default_text("evaluation")[:20_000]
    hf = tok(text)["input_ids"]
    for other in (e.name for e in vocab.PRE_TOKENIZERS if e.name != name):
        write_gguf(folder, tmp_path / f"{other}.gguf", pre=other)
        with load(tmp_path / f"{other}.gguf") as llm:
            differs = llm.tokenize(text.encode(), add_bos=True, special=False) != hf
        # a Qwen2 vocabulary has single digits only, so llama-bpe's digit triples change nothing on it
        assert differs == ((name, other) != ("qwen2", "llama-bpe")), other


def test_unknown_pre_tokenizer_is_an_input_error(tmp_path):
    pre = PRE_JSON["llama-bpe"].replace(r"\\p{N}{1,3}", r"\\p{N}{1,4}")
    folder = trained_tokenizer(tmp_path / "tok", pre)
    w = gguf.GGUFWriter(str(tmp_path / "v.gguf"), "llama")
    with pytest.raises(InputError) as e:
        vocab.add_vocab(w, folder, 2048)
    msg = str(e.value)
    assert "\n" not in msg and "pre-tokenizer unknown" in msg and "PRE_TOKENIZERS" in msg and "{1,4}" in msg


def test_vocab_must_fit_the_embedding_rows(tmp_path):
    folder = trained_tokenizer(tmp_path / "tok", PRE_JSON["gpt-2"])
    w = gguf.GGUFWriter(str(tmp_path / "v.gguf"), "llama")
    with pytest.raises(InputError, match="has id 2002 but the model has 2000 embedding rows"):
        vocab.add_vocab(w, folder, 2000)


def test_repeated_token_text_is_an_input_error(tmp_path):
    folder = trained_tokenizer(tmp_path / "tok", PRE_JSON["gpt-2"])
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["added_tokens"].append({"id": 2003, "content": "a", "single_word": False, "lstrip": False, "rstrip": False,
                               "normalized": False, "special": False})
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    w = gguf.GGUFWriter(str(tmp_path / "v.gguf"), "llama")
    with pytest.raises(InputError, match="appears twice"):
        vocab.add_vocab(w, folder, 2048)


def test_without_transformers_the_same_keys(tiny, tmp_path, monkeypatch):
    """When transformers cannot load the tokenizer, SpecialVocab's reading gives the same switches."""
    llama3 = trained_tokenizer(tmp_path / "llama3", PRE_JSON["llama-bpe"], ignore_merges=True, llama3_specials=True)
    keys = ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix",
            "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")
    for folder in (tiny, llama3):
        write_gguf(folder, tmp_path / "probed.gguf")
        with monkeypatch.context() as m:
            m.setattr(vocab, "_probe", lambda model_dir: None)
            m.setattr(vocab, "_built", {})
            write_gguf(folder, tmp_path / "read.gguf")
        probed, read = fields(tmp_path / "probed.gguf"), fields(tmp_path / "read.gguf")
        assert [probed[k] for k in keys] == [read[k] for k in keys], folder
