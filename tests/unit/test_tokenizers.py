"""Tokenizers against independent oracles (HF `tokenizers`, `transformers`) and their contracts.

The oracles are only used here. GPT-2 and BERT ids are compared on the whole Austen corpus and
on crafted strings, for both backends of our tokenizers.
"""

import numpy as np
import pytest

from megatron.tokenizer import MegatronTokenizer, TokenizerConfig, build_tokenizer
from megatron.tokenizer.bert_wordpiece import BertWordPieceTokenizer
from megatron.tokenizer.gpt2_bpe import GPT2BPETokenizer, bytes_to_unicode
from megatron.tokenizer.huggingface_tokenizer import HuggingFaceTokenizer
from megatron.tokenizer.null_tokenizer import NullTokenizer
from megatron.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer

tokenizers = pytest.importorskip("tokenizers")

BACKENDS = ["python", "hf"]

GPT2_TRICKY = [
    "Hello world",
    "  leading spaces and   multiple   spaces  ",
    "tabs\tand\nnewlines\n\n\nand\r\nCRLF \n trailing\n",
    "It's he's we're they've I'm you'll she'd 'S 'LL",
    "numbers 1234567 3.14159 1,000,000 ٣٤٥ ½",
    "unicode: naïve café Ångström Ελληνικά русский 中文字符 日本語 한국어 עברית العربية",
    "emojis 😀👍🏽👨‍👩‍👧 🇫🇷 ♥️",
    "punctuation!!! ...??? ---- ((nested)) [x] {y} <z> @#$%^&*_+=|\\~`",
    "\u00a0nbsp\u2003em space\u200bzero width\ufeffbom",
    "control \x00\x01\x1f\x7f chars",
    "a" * 300,
    " " * 17,
    "",
    "ﬁne ligature and combining e\u0301",
]

BERT_TRICKY = [
    "Hello, world!",
    "Héllo Wörld naïve café RÉSUMÉ Ångström",
    "中文字符 and 日本語テキスト 한국어 (Korean)",
    "control\x00chars\x07and\u200bformat\ufeffand\ufffdreplacement",
    "tab\tnew\nline\r\n  spaces\u3000ideographic\u00a0nbsp",
    "don't stop!!! (yes) [no] {maybe} ¿qué? «quote» — dash … ellipsis",
    "x" * 101 + " " + "y" * 100 + " ok",
    "İstanbul ΣΑΣ straße ﬁne Œuvre",
    "emoji 😀👍🏽 unknown",
    "$100.00 @user #tag 3.14 1,000 50% a+b=c a/b",
    "unaffable antidisestablishmentarianism",
    "",
]


@pytest.fixture(scope="module")
def austen(repo_root):
    """The chapters of the embedded Austen corpus (269 texts, ~4 MB)."""
    import sys

    sys.path.insert(0, str(repo_root))
    from tools.austen_to_jsonl import iter_documents

    return [doc["text"] for doc in iter_documents(repo_root / "data" / "corpora" / "austen")]


# sha256 of data/tokenizers (see its README): GPT-2's are those of OpenAI's encoder.json and
# vocab.bpe; BERT's is that of the 30,522-line bert-base-uncased vocab.txt the files came with.
REFERENCE_SHA256 = {
    "gpt2-vocab.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "gpt2-merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "bert-base-uncased-vocab.txt": (
        "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
    ),
}


def test_shipped_tokenizer_files_are_the_published_ones(tokenizer_dir):
    """The shipped files are byte for byte the recorded ones (no end-of-line conversion, no
    truncation), and the README's table of checksums says the same."""
    import hashlib

    readme = (tokenizer_dir / "README.md").read_text(encoding="utf-8")
    for name, sha in REFERENCE_SHA256.items():
        assert hashlib.sha256((tokenizer_dir / name).read_bytes()).hexdigest() == sha, name
        assert f"| `{name}` |" in readme and f"`{sha}`" in readme, name


# ----------------------------------------------------------------------------------------------
# GPT-2


@pytest.fixture(scope="module")
def gpt2_files(tokenizer_dir):
    return str(tokenizer_dir / "gpt2-vocab.json"), str(tokenizer_dir / "gpt2-merges.txt")


@pytest.fixture(scope="module", params=BACKENDS)
def gpt2(request, gpt2_files):
    return GPT2BPETokenizer(*gpt2_files, backend=request.param)


@pytest.fixture(scope="module")
def gpt2_oracle(gpt2_files):
    """HF ByteLevelBPETokenizer: no special tokens, so "<|endoftext|>" is text, as in Megatron."""
    return tokenizers.ByteLevelBPETokenizer(*gpt2_files)


@pytest.fixture(scope="module")
def gpt2_oracle_austen(gpt2_oracle, austen):
    return [e.ids for e in gpt2_oracle.encode_batch(austen)]


def _corpus_for(backend, austen, expected):
    """The whole corpus for our own code; every 4th chapter for the HF pipeline we configure."""
    step = 1 if backend == "python" else 4
    return austen[::step], expected[::step]


@pytest.mark.slow
def test_gpt2_matches_oracle_on_austen(gpt2, gpt2_oracle_austen, austen):
    assert sum(map(len, gpt2_oracle_austen)) > 900_000
    austen, expected = _corpus_for(gpt2.backend, austen, gpt2_oracle_austen)
    got = [gpt2.tokenize(text) for text in austen]
    mismatched = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    assert not mismatched, f"{len(mismatched)} chapters differ, first {mismatched[0]}"
    assert gpt2.tokenize_batch(austen[:20]) == expected[:20]


@pytest.mark.parametrize("text", GPT2_TRICKY)
def test_gpt2_matches_oracle_on_tricky_strings(gpt2, gpt2_oracle, text):
    assert gpt2.tokenize(text) == gpt2_oracle.encode(text).ids
    assert gpt2.detokenize(gpt2.tokenize(text)) == text


@pytest.fixture(scope="module")
def gpt2_transformers(gpt2_files):
    transformers = pytest.importorskip("transformers")
    return transformers.GPT2Tokenizer(vocab=gpt2_files[0], merges=gpt2_files[1])


def test_gpt2_matches_transformers(gpt2, gpt2_transformers):
    oracle = gpt2_transformers
    for text in GPT2_TRICKY + ["Megatron <|endoftext|> text"]:
        expected = oracle(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert gpt2.tokenize(text) == expected, text


def test_gpt2_endoftext_is_plain_text(gpt2):
    ids = gpt2.tokenize("end<|endoftext|>start")
    assert gpt2.eod == 50256 and gpt2.eod not in ids
    assert ids == [437, 27, 91, 437, 1659, 5239, 91, 29, 9688]
    assert gpt2.inv_vocab[gpt2.eod] == "<|endoftext|>"
    assert gpt2.detokenize([gpt2.eod]) == "<|endoftext|>"


def test_gpt2_vocab_and_special_ids(gpt2):
    assert gpt2.name == "GPT2BPETokenizer"
    assert gpt2.vocab_size == 50257 == len(gpt2.vocab) == len(gpt2.inv_vocab)
    assert gpt2.vocab["Hello"] == 15496 and gpt2.inv_vocab[995] == "Ġworld"
    assert gpt2.tokenize("Hello world") == [15496, 995]
    assert gpt2.eod == gpt2.eos == gpt2.bos == 50256
    for missing in ("pad", "cls", "sep", "mask", "unk"):
        with pytest.raises(NotImplementedError, match=f"GPT2BPETokenizer has no {missing} token"):
            getattr(gpt2, missing)


def test_gpt2_detokenize_round_trips_austen(gpt2, austen):
    for text in austen[::10]:
        assert gpt2.detokenize(gpt2.tokenize(text)) == text


def test_gpt2_detokenize_cut_character_and_bad_id(gpt2):
    ids = gpt2.tokenize("😀")
    assert len(ids) > 1
    assert gpt2.detokenize(ids[:1]) == "\ufffd"  # half an emoji decodes to U+FFFD, not an error
    with pytest.raises(ValueError, match="not in the vocabulary"):
        gpt2.detokenize([1, 10**6])


def test_gpt2_byte_table_is_a_bijection_onto_printables():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


def test_gpt2_python_cache_is_bounded(gpt2_files, austen):
    small = GPT2BPETokenizer(*gpt2_files, backend="python", cache_size=50)
    full = GPT2BPETokenizer(*gpt2_files, backend="python")
    text = austen[0][:5000]
    assert small.tokenize(text) == full.tokenize(text)
    assert 0 < len(small._python.cache) <= 50


# ----------------------------------------------------------------------------------------------
# BERT


@pytest.fixture(scope="module")
def bert_vocab(tokenizer_dir):
    return str(tokenizer_dir / "bert-base-uncased-vocab.txt")


@pytest.fixture(scope="module", params=BACKENDS)
def bert(request, bert_vocab):
    return BertWordPieceTokenizer(bert_vocab, lower_case=True, backend=request.param)


def _hf_bert_oracle(vocab, lower):
    return tokenizers.BertWordPieceTokenizer(vocab, lowercase=lower, strip_accents=lower)


@pytest.fixture(scope="module")
def bert_oracle(bert_vocab):
    return _hf_bert_oracle(bert_vocab, lower=True)


@pytest.fixture(scope="module")
def bert_transformers(bert_vocab):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizer(vocab=bert_vocab, do_lower_case=True)


def _oracle_ids(oracle, text):
    return oracle.encode(text, add_special_tokens=False).ids


def test_bert_hello_world(bert):
    assert bert.tokenize("Hello, world!") == [7592, 1010, 2088, 999]


@pytest.fixture(scope="module")
def bert_oracle_austen(bert_oracle, austen):
    return [e.ids for e in bert_oracle.encode_batch(austen, add_special_tokens=False)]


@pytest.mark.slow
def test_bert_matches_oracle_on_austen(bert, bert_oracle_austen, austen):
    austen, expected = _corpus_for(bert.backend, austen, bert_oracle_austen)
    got = [bert.tokenize(text) for text in austen]
    mismatched = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    assert not mismatched, f"{len(mismatched)} chapters differ, first {mismatched[0]}"


@pytest.mark.parametrize("text", BERT_TRICKY)
def test_bert_matches_oracles_on_tricky_strings(bert, bert_oracle, bert_transformers, text):
    assert bert.tokenize(text) == _oracle_ids(bert_oracle, text)
    assert bert.tokenize(text) == bert_transformers(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bert_cased_matches_oracle(bert_vocab, austen, backend):
    cased = BertWordPieceTokenizer(bert_vocab, lower_case=False, backend=backend)
    assert cased.name == "BertWordPieceCase"
    oracle = _hf_bert_oracle(bert_vocab, lower=False)
    for text in BERT_TRICKY + austen[:5]:
        assert cased.tokenize(text) == _oracle_ids(oracle, text), text[:80]


# Code-point ranges for random strings: ASCII, Latin, Greek/Cyrillic, general punctuation,
# CJK symbols, ideographs, Hangul, emoji, combining marks, full-width forms, math letters,
# variation selectors, Hebrew/Arabic, Devanagari, Linear B.
FUZZ_RANGES = [
    (0x0, 0x80), (0x80, 0x250), (0x370, 0x530), (0x2000, 0x2070), (0x3000, 0x3100),
    (0x4E00, 0x4E80), (0xAC00, 0xAC80), (0x1F600, 0x1F650), (0x300, 0x370), (0xFF00, 0xFF70),
    (0x1D400, 0x1D480), (0xFE00, 0xFE20), (0x590, 0x700), (0x900, 0x980), (0x10000, 0x10100),
]  # fmt: skip


def _random_strings(count, seed=0):
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randint(1, 30)):
            lo, hi = rng.choice(FUZZ_RANGES)
            chars.append(chr(rng.randrange(lo, hi)))
            if rng.random() < 0.2:
                chars.append(" ")
        # U+061D became punctuation in Unicode 14; the oracle's tables predate that.
        out.append("".join(chars).replace("\u061d", ""))
    return out


def test_gpt2_matches_oracle_on_random_unicode(gpt2, gpt2_oracle):
    for text in _random_strings(500):
        assert gpt2.tokenize(text) == gpt2_oracle.encode(text).ids, ascii(text)


@pytest.mark.parametrize("lower", [True, False])
def test_bert_matches_oracle_on_random_unicode(bert_vocab, lower):
    oracle = _hf_bert_oracle(bert_vocab, lower)
    ours = BertWordPieceTokenizer(bert_vocab, lower_case=lower, backend="python")
    for text in _random_strings(500, seed=1):
        assert ours.tokenize(text) == _oracle_ids(oracle, text), ascii(text)


def test_bert_accents_cjk_and_long_words(bert):
    inv = bert.inv_vocab
    assert [inv[i] for i in bert.tokenize("Naïve CAFÉ")] == ["naive", "cafe"]
    assert [inv[i] for i in bert.tokenize("中文")] == ["中", "文"]
    assert bert.tokenize("x" * 101) == [bert.unk]
    assert bert.unk not in bert.tokenize("x" * 100)
    assert [inv[i] for i in bert.tokenize("unaffable")] == ["una", "##ffa", "##ble"]


def test_bert_special_tokens_in_text_are_plain_text(bert):
    ids = bert.tokenize("[MASK] [CLS]")
    assert bert.mask not in ids and bert.cls not in ids
    assert [bert.inv_vocab[i] for i in ids] == ["[", "mask", "]", "[", "cl", "##s", "]"]


def test_bert_special_ids_follow_megatron(bert_vocab, bert):
    assert (bert.pad, bert.unk, bert.cls, bert.sep, bert.mask) == (0, 100, 101, 102, 103)
    assert bert.eod == bert.sep
    # Megatron appends [BOS] and [EOS] to the 30522 entries of bert-base-uncased.
    assert (bert.bos, bert.eos, bert.vocab_size) == (30522, 30523, 30524)
    assert bert.additional_special_tokens_ids == []
    extra = BertWordPieceTokenizer(bert_vocab, vocab_extra_ids=3, backend="python")
    assert extra.vocab_size == 30527
    assert extra.additional_special_tokens_ids == [30524, 30525, 30526]
    assert extra.inv_vocab[30526] == "<extra_id_2>"
    assert extra.detokenize([7592, 30524]) == "hello <extra_id_0>"


def test_bert_word_continuation(bert):
    ids = bert.tokenize("unaffable")
    assert [bert.is_word_continuation(i) for i in ids] == [False, True, True]
    mask = bert.word_continuation_mask()
    assert mask.dtype == np.bool_ and mask.shape == (bert.vocab_size,)
    assert mask[ids].tolist() == [False, True, True]
    assert int(mask.sum()) == sum(t.startswith("##") for t in bert.vocab)


def test_bert_detokenize(bert):
    assert bert.detokenize(bert.tokenize("Hello, world! It's unaffable.")) == (
        "hello, world! it's unaffable."
    )
    with pytest.raises(ValueError, match="not in the vocabulary"):
        bert.detokenize([10**6])


def test_bert_batch_equals_loop(bert, austen):
    texts = austen[:10] + BERT_TRICKY
    assert bert.tokenize_batch(texts) == [bert.tokenize(t) for t in texts]


def test_bert_requires_unk(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\nhello\n")
    with pytest.raises(ValueError, match=r"no \[UNK\]"):
        BertWordPieceTokenizer(str(vocab), backend="python")


# ----------------------------------------------------------------------------------------------
# NullTokenizer


def test_null_tokenizer():
    tok = build_tokenizer(TokenizerConfig("NullTokenizer", vocab_size=100))
    assert isinstance(tok, NullTokenizer)
    assert tok.vocab_size == 101 and tok.eod == 100
    assert tok.tokenize("1 2  3\n99") == [1, 2, 3, 99]
    assert tok.detokenize([1, 2, 3]) == "1 2 3"
    assert tok.tokenize_batch(["4 5", ""]) == [[4, 5], []]
    assert tok.vocab["7"] == 7 and tok.inv_vocab[100] == "100"
    with pytest.raises(NotImplementedError, match="NullTokenizer has no mask token"):
        _ = tok.mask
    with pytest.raises(ValueError, match="integers"):
        tok.tokenize("1 two 3")


# ----------------------------------------------------------------------------------------------
# SentencePiece and HuggingFaceTokenizer, from models trained here


def _train_sentencepiece(path, sentences, **options):
    spm = pytest.importorskip("sentencepiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(path),
        vocab_size=400,
        model_type="bpe",
        minloglevel=2,
        num_threads=1,
        **options,
    )
    return str(path) + ".model"


@pytest.fixture(scope="module")
def austen_lines(austen):
    return [line for text in austen[:3] for line in text.split("\n") if line.strip()]


def test_sentencepiece_tokenizer(tmp_path, austen_lines):
    model = _train_sentencepiece(
        tmp_path / "sp",
        austen_lines,
        pad_id=3,
        control_symbols=["<CLS>", "<SEP>", "<MASK>"],
    )
    tok = build_tokenizer(
        TokenizerConfig("SentencePieceTokenizer", tokenizer_model=model, vocab_extra_ids=2)
    )
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.unk, tok.bos, tok.eos, tok.pad) == (0, 1, 2, 3)
    assert tok.eod == tok.eos
    assert (tok.cls, tok.sep, tok.mask) == (4, 5, 6)
    assert tok.vocab_size == 402 and tok.additional_special_tokens_ids == [400, 401]
    text = "Emma Woodhouse, handsome, clever, and rich."
    ids = tok.tokenize(text)
    assert all(0 <= i < 400 for i in ids) and len(ids) < len(text)
    assert tok.detokenize(ids) == text
    assert tok.detokenize(ids + [400]) == text + "<extra_id_0>"
    assert tok.tokenize_batch([text, "Mr. Knightley"]) == [ids, tok.tokenize("Mr. Knightley")]
    assert tok.inv_vocab[ids[0]] in tok.vocab


def test_sentencepiece_missing_special_ids(tmp_path, austen_lines):
    model = _train_sentencepiece(tmp_path / "sp", austen_lines, bos_id=-1)
    tok = SentencePieceTokenizer(model)
    assert tok.eod == tok.eos == 2
    with pytest.raises(NotImplementedError, match="has no bos token; .*bos_id=-1"):
        _ = tok.bos
    with pytest.raises(NotImplementedError, match="has no pad token"):
        _ = tok.pad  # sentencepiece disables pad by default
    with pytest.raises(NotImplementedError, match="SentencePieceTokenizer has no mask token"):
        _ = tok.mask


@pytest.fixture(scope="module")
def hf_tokenizer_json(tmp_path_factory, austen):
    """A small byte-level BPE tokenizer.json with an eos and a pad special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(austen[:3], trainer=trainer)
    folder = tmp_path_factory.mktemp("hf")
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_huggingface_tokenizer_file_and_folder(hf_tokenizer_json):
    text = "Emma Woodhouse, handsome, clever, and rich.\n"
    by_file = build_tokenizer(
        TokenizerConfig(
            "HuggingFaceTokenizer", tokenizer_model=str(hf_tokenizer_json / "tokenizer.json")
        )
    )
    by_folder = build_tokenizer(
        TokenizerConfig("HuggingFaceTokenizer", tokenizer_model=str(hf_tokenizer_json))
    )
    assert isinstance(by_file, HuggingFaceTokenizer)
    ids = by_file.tokenize(text)
    assert ids == by_folder.tokenize(text) and by_file.detokenize(ids) == text
    assert by_file.vocab_size == 500 == len(by_file.vocab)
    assert (by_file.eod, by_file.eos, by_file.pad) == (0, 0, 1)
    assert by_file.tokenize_batch([text, text]) == [ids, ids]
    with pytest.raises(NotImplementedError, match="HuggingFaceTokenizer has no bos token"):
        _ = by_file.bos


def test_huggingface_tokenizer_config_names_special_tokens(hf_tokenizer_json, tmp_path):
    import json
    import shutil

    shutil.copy(hf_tokenizer_json / "tokenizer.json", tmp_path / "tokenizer.json")
    config = {"eos_token": "<pad>", "bos_token": {"content": "</s>"}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = HuggingFaceTokenizer(str(tmp_path))
    assert (tok.eos, tok.eod, tok.bos) == (1, 1, 0)


# ----------------------------------------------------------------------------------------------
# Config validation and build_tokenizer


def test_build_tokenizer_types(gpt2_files, bert_vocab):
    gpt2 = build_tokenizer(
        TokenizerConfig(
            "GPT2BPETokenizer",
            vocab_file=gpt2_files[0],
            merge_file=gpt2_files[1],
            tokenizer_backend="python",
        )
    )
    assert isinstance(gpt2, GPT2BPETokenizer) and isinstance(gpt2, MegatronTokenizer)
    assert gpt2.backend == "python"
    for kind, lower in (("BertWordPieceLowerCase", True), ("BertWordPieceCase", False)):
        bert = build_tokenizer(TokenizerConfig(kind, vocab_file=bert_vocab, vocab_extra_ids=1))
        assert isinstance(bert, BertWordPieceTokenizer) and bert.name == kind
        assert bert.lower_case is lower and bert.vocab_size == 30525


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tokenizer_type="GPT2BPE"), "not supported; choose one of GPT2BPETokenizer, "),
        (dict(tokenizer_type="GPT2BPETokenizer"), "needs --vocab-file"),
        (dict(tokenizer_type="BertWordPieceCase"), "needs --vocab-file"),
        (dict(tokenizer_type="SentencePieceTokenizer"), "needs --tokenizer-model"),
        (dict(tokenizer_type="HuggingFaceTokenizer"), "needs --tokenizer-model"),
        (dict(tokenizer_type="NullTokenizer"), "needs --vocab-size"),
        (dict(tokenizer_type="NullTokenizer", vocab_size=0), "needs --vocab-size"),
        (dict(tokenizer_type="NullTokenizer", vocab_size=5, vocab_extra_ids=2), "only supported"),
        (dict(tokenizer_type="NullTokenizer", vocab_size=5, vocab_extra_ids=-1), ">= 0"),
        (dict(tokenizer_type="NullTokenizer", vocab_size=5, tokenizer_backend="rust"), "backend"),
        (
            dict(tokenizer_type="SentencePieceTokenizer", tokenizer_model="/no/such.model"),
            r"--tokenizer-model '/no/such.model' does not exist",
        ),
        (
            dict(tokenizer_type="HuggingFaceTokenizer", tokenizer_model="gpt2"),
            "nothing is downloaded",
        ),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenizerConfig(**kwargs)


def test_config_missing_merge_file(gpt2_files, tmp_path):
    with pytest.raises(ValueError, match="GPT2BPETokenizer needs --merge-file"):
        TokenizerConfig("GPT2BPETokenizer", vocab_file=gpt2_files[0])
    missing = str(tmp_path / "merges.txt")
    with pytest.raises(ValueError, match=f"--merge-file '{missing}' does not exist"):
        TokenizerConfig("GPT2BPETokenizer", vocab_file=gpt2_files[0], merge_file=missing)
    with pytest.raises(ValueError, match="folder without tokenizer.json"):
        TokenizerConfig("HuggingFaceTokenizer", tokenizer_model=str(tmp_path))


def test_config_catches_swapped_and_wrong_tokenizer_files(gpt2_files, bert_vocab, tmp_path):
    """Swapped --vocab-file / --merge-file fail at configuration, naming both flags, instead of a
    JSONDecodeError when the tokenizer is built."""
    vocab, merges = gpt2_files
    with pytest.raises(ValueError, match="looks like a merges file and --merge-file .* swap them"):
        TokenizerConfig("GPT2BPETokenizer", vocab_file=merges, merge_file=vocab)
    with pytest.raises(ValueError, match=f"--vocab-file '{merges}' looks like a merges file"):
        TokenizerConfig("GPT2BPETokenizer", vocab_file=merges, merge_file=merges)
    with pytest.raises(ValueError, match=f"--merge-file '{vocab}' looks like a vocab.json"):
        TokenizerConfig("GPT2BPETokenizer", vocab_file=vocab, merge_file=vocab)
    with pytest.raises(ValueError, match=f"--vocab-file '{bert_vocab}' is not JSON"):
        TokenizerConfig("GPT2BPETokenizer", vocab_file=bert_vocab, merge_file=merges)
    with pytest.raises(ValueError, match="looks like a GPT-2 vocab.json.*BERT vocab.txt"):
        TokenizerConfig("BertWordPieceLowerCase", vocab_file=vocab)
    broken = tmp_path / "vocab.json"
    broken.write_text('{"a": 0,')  # starts like JSON, is not: the loader names the flag
    with pytest.raises(ValueError, match=f"--vocab-file '{broken}' is not valid JSON"):
        GPT2BPETokenizer(str(broken), merges, backend="python")


def test_backend_selection(gpt2_files):
    from megatron.tokenizer._backend import resolve_backend

    assert resolve_backend("auto", "X") == "python"  # measured faster; see _backend.AUTO_BACKEND
    assert resolve_backend("hf", "X") == "hf"
    with pytest.raises(ValueError, match="backend 'rust' is not supported"):
        resolve_backend("rust", "X")
    assert GPT2BPETokenizer(*gpt2_files).backend == "python"


def test_gpt2_vocab_without_endoftext(tmp_path, gpt2_files):
    vocab = tmp_path / "vocab.json"
    vocab.write_text('{"a": 0, "b": 1}')
    with pytest.raises(ValueError, match="no '<\\|endoftext\\|>' entry"):
        GPT2BPETokenizer(str(vocab), gpt2_files[1], backend="python")


def test_tokenizers_pickle(gpt2_files, bert_vocab):
    """Preprocessing workers receive tokenizers (or their configs) by pickling."""
    import pickle

    cases = [
        (GPT2BPETokenizer(*gpt2_files, backend="hf"), "Hello world"),
        (GPT2BPETokenizer(*gpt2_files, backend="python"), "Hello world"),
        (BertWordPieceTokenizer(bert_vocab, backend="hf"), "Hello world"),
        (NullTokenizer(10), "1 2 3"),
    ]
    for tok, text in cases:
        clone = pickle.loads(pickle.dumps(tok))
        assert clone.tokenize(text) == tok.tokenize(text) != []


def test_austen_fixture_is_the_corpus(austen):
    """Guards the oracle comparisons against silently running on an empty corpus."""
    assert len(austen) == 269 and sum(map(len, austen)) > 4_000_000
