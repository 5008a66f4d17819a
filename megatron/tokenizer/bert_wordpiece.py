"""BERT WordPiece (--tokenizer-type BertWordPieceLowerCase / BertWordPieceCase).

The BERT "basic" tokenizer, then greedy longest-match-first WordPiece on each word:

1. Clean: drop NUL, U+FFFD and control characters (Unicode Cc/Cf except tab, newline, carriage
   return, which count as whitespace).
2. Lower-case variant only: lower-case (character by character, so a word-final capital sigma
   becomes "σ" as in HF `tokenizers`), decompose (NFD) and drop combining marks (Mn), so
   "Naïve" -> "naive".
3. Split on whitespace; then every punctuation character (ASCII non-alphanumeric printables and
   Unicode P*) and every CJK ideograph becomes a word of its own.
4. WordPiece: take the longest vocabulary entry that prefixes the word, then the longest
   "##"-prefixed entry that prefixes the rest, and so on. A word with a part that matches nothing,
   or longer than 100 characters, becomes a single [UNK].

Megatron conventions kept: [BOS] and [EOS] are appended to the vocabulary when it lacks them,
then the --vocab-extra-ids <extra_id_N> tokens; eod is [SEP]. Added tokens are never produced by
``tokenize`` (text "[MASK]" is the three words "[", "mask", "]").
"""

from __future__ import annotations

import functools
import itertools
import logging
import unicodedata
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import regex

from ._backend import TwoBackendTokenizer, resolve_backend

logger = logging.getLogger(__name__)

MAX_WORD_CHARS = 100
"""Words longer than this many characters become [UNK]."""

CONTINUATION_PREFIX = "##"

_CJK = (
    r"\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002b73f"
    r"\U0002b740-\U0002b81f\U0002b820-\U0002ceaf\U0002f800-\U0002fa1f"
)
_PUNCT_CATEGORIES = frozenset({"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"})


@functools.lru_cache(maxsize=None)
def _category_classes() -> Dict[str, str]:
    """Regex class bodies of the code points in the Cf, Mn and P* categories of Python's own
    Unicode tables (`unicodedata`, what Google's and Megatron's BERT tokenizers consult). The
    `regex` package's \\p{..} classes follow whatever Unicode version that package ships, so ids
    would change with its version (e.g. U+05C9, unassigned in Unicode 14, is Mn in newer tables)."""
    wanted = {"Cf": "Cf", "Mn": "Mn", **{c: "P" for c in _PUNCT_CATEGORIES}}
    ranges: Dict[str, List[Tuple[int, int]]] = {"Cf": [], "Mn": [], "P": []}
    for cp in range(0x110000):
        key = wanted.get(unicodedata.category(chr(cp)))
        if key is None:
            continue
        spans = ranges[key]
        if spans and spans[-1][1] == cp - 1:
            spans[-1] = (spans[-1][0], cp)
        else:
            spans.append((cp, cp))
    return {k: "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in v) for k, v in ranges.items()}


@functools.lru_cache(maxsize=None)
def _patterns():
    """(control chars, combining marks, words) patterns, built once per process."""
    cls = _category_classes()
    punct = r"\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e" + cls["P"]
    control = regex.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd" + cls["Cf"] + "]+")
    marks = regex.compile("[" + cls["Mn"] + "]+")
    # One punctuation char, one CJK ideograph, or a run of anything else that is not whitespace.
    words = regex.compile(rf"[{punct}]|[{_CJK}]|[^\s{punct}{_CJK}]+")
    return control, marks, words


def load_wordpiece_vocab(path: str) -> Dict[str, int]:
    """Read vocab.txt: the token on line i (stripped of surrounding whitespace) has id i."""
    vocab: Dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            vocab[line.strip()] = index
    return vocab


def basic_tokenize(text: str, lower_case: bool) -> List[str]:
    """The BERT basic tokenizer: cleaned, optionally lower-cased, accent-stripped words."""
    control, marks, words = _patterns()
    text = control.sub("", text)
    if lower_case:
        if text.isascii():
            text = text.lower()
        else:
            # Lower-case character by character, as the HF `tokenizers` backend does: str.lower()
            # alone would turn a word-final capital sigma into final sigma (U+03C2).
            text = text.replace("\u03a3", "\u03c3").lower()
            text = marks.sub("", unicodedata.normalize("NFD", text))
    return words.findall(text)


class WordPieceEncoder:
    """Greedy longest-match-first WordPiece over a vocabulary, with a bounded per-word cache."""

    def __init__(self, vocab: Dict[str, int], unk_id: int, lower_case: bool, cache_size: int):
        self.vocab = vocab
        self.unk = (unk_id,)
        self.lower_case = lower_case
        self.max_piece_chars = max((len(t) for t in vocab), default=1)
        self.cache: Dict[str, Tuple[int, ...]] = {}
        self.cache_size = cache_size

    def encode_word(self, word: str) -> Tuple[int, ...]:
        """Ids of one basic-tokenized word (cached)."""
        ids = self._wordpiece(word)
        if len(self.cache) >= self.cache_size:
            self.cache.clear()
        self.cache[word] = ids
        return ids

    def _wordpiece(self, word: str) -> Tuple[int, ...]:
        n = len(word)
        if n > MAX_WORD_CHARS:
            return self.unk
        vocab = self.vocab
        ids = []
        start = 0
        while start < n:
            end = min(n, start + self.max_piece_chars)
            prefix = CONTINUATION_PREFIX if start > 0 else ""
            while end > start:
                idx = vocab.get(prefix + word[start:end])
                if idx is not None:
                    ids.append(idx)
                    break
                end -= 1
            else:
                return self.unk
            start = end
        return tuple(ids)

    def encode(self, text: str) -> List[int]:
        """Ids of ``text``."""
        get = self.cache.get
        encode_word = self.encode_word
        words = basic_tokenize(text, self.lower_case)
        return list(itertools.chain.from_iterable([get(w) or encode_word(w) for w in words]))


class BertWordPieceTokenizer(TwoBackendTokenizer):
    """BERT WordPiece from a vocab.txt.

    Args:
        vocab_file: vocab.txt, one token a line; must contain [UNK].
        lower_case: lower-case and strip accents (BertWordPieceLowerCase) or not (...Case).
        vocab_extra_ids: number of <extra_id_N> tokens to append (--vocab-extra-ids).
        backend: "python", "hf" or "auto" (see ``TokenizerConfig.tokenizer_backend``).
        cache_size: words kept in the Python backend's cache (cleared when full).
    """

    def __init__(
        self,
        vocab_file: str,
        lower_case: bool = True,
        vocab_extra_ids: int = 0,
        backend: str = "auto",
        cache_size: int = 1 << 18,
    ):
        super().__init__("BertWordPieceLowerCase" if lower_case else "BertWordPieceCase")
        self.lower_case = lower_case
        self.backend = resolve_backend(backend, self.name)
        self._vocab = load_wordpiece_vocab(vocab_file)
        if "[UNK]" not in self._vocab:
            raise ValueError(f"--vocab-file {vocab_file!r} has no [UNK] token (WordPiece needs it)")
        self._inv_vocab = {i: t for t, i in self._vocab.items()}
        self._python = WordPieceEncoder(self._vocab, self._vocab["[UNK]"], lower_case, cache_size)
        self._hf = _build_hf_wordpiece(vocab_file, lower_case) if self.backend == "hf" else None
        self._bos = self._add_token("[BOS]")
        self._eos = self._add_token("[EOS]")
        self._extra_ids = [self._add_token(f"<extra_id_{i}>") for i in range(vocab_extra_ids)]
        self._continuation_mask: Optional[np.ndarray] = None
        logger.info("%s: %d ids, backend %s", self.name, self.vocab_size, self.backend)

    def _add_token(self, token: str) -> int:
        """Append ``token`` to the vocabulary unless present; returns its id."""
        if token not in self._vocab:
            idx = len(self._vocab)
            self._vocab[token] = idx
            self._inv_vocab[idx] = token
        return self._vocab[token]

    def detokenize(self, ids: Sequence[int]) -> str:
        """Tokens joined by spaces, "##" pieces glued to their word, common spaces removed
        (" ." -> ".", " n't" -> "n't", ...)."""
        try:
            tokens = [self._inv_vocab[i] for i in ids]
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is not in the vocabulary") from None
        text = " ".join(tokens).replace(" " + CONTINUATION_PREFIX, "").strip()
        for before, after in _DETOKENIZE_CLEANUP:
            text = text.replace(before, after)
        return text

    def is_word_continuation(self, token_id: int) -> bool:
        """True when the token continues the previous token's word ("##" prefix); whole-word
        masking masks such tokens together with the word they continue."""
        return self._inv_vocab[token_id].startswith(CONTINUATION_PREFIX)

    def word_continuation_mask(self) -> np.ndarray:
        """Boolean array over ids (length vocab_size): ``is_word_continuation`` for every id."""
        if self._continuation_mask is None or len(self._continuation_mask) != self.vocab_size:
            mask = np.zeros(self.vocab_size, dtype=bool)
            for idx, token in self._inv_vocab.items():
                mask[idx] = token.startswith(CONTINUATION_PREFIX)
            self._continuation_mask = mask
        return self._continuation_mask

    @property
    def additional_special_tokens_ids(self) -> List[int]:
        return list(self._extra_ids)

    def _special(self, token: str) -> int:
        idx = self._vocab.get(token)
        if idx is None:
            raise self._missing(token, "its --vocab-file does not contain it")
        return idx

    @property
    def cls(self) -> int:
        return self._special("[CLS]")

    @property
    def sep(self) -> int:
        return self._special("[SEP]")

    @property
    def pad(self) -> int:
        return self._special("[PAD]")

    @property
    def mask(self) -> int:
        return self._special("[MASK]")

    @property
    def unk(self) -> int:
        return self._special("[UNK]")

    @property
    def eod(self) -> int:
        """[SEP], as in Megatron."""
        return self.sep

    @property
    def bos(self) -> int:
        return self._bos

    @property
    def eos(self) -> int:
        return self._eos


_DETOKENIZE_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _build_hf_wordpiece(vocab_file: str, lower_case: bool):
    """HF `tokenizers` pipeline with the same rules; no post-processor, so no [CLS]/[SEP]."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    model = models.WordPiece.from_file(
        vocab_file, unk_token="[UNK]", max_input_chars_per_word=MAX_WORD_CHARS
    )
    tok = Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lower_case, lowercase=lower_case
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
    return tok
