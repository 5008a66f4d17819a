"""GPT-2 byte-level BPE (--tokenizer-type GPT2BPETokenizer).

The algorithm (as published with GPT-2):

1. Pre-tokenize the text with the GPT-2 regex into words ("'s", " hello", " 123", "!!", runs of
   spaces...). A word never crosses a letter/number/other boundary and keeps its leading space.
2. Map every UTF-8 byte of a word to a printable unicode character (the byte-to-unicode table:
   printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100 onwards), so the
   vocabulary and merges are plain strings.
3. Repeatedly merge the adjacent symbol pair with the lowest rank in merges.txt until no pair of
   the word has a rank; each final symbol is a vocabulary entry.

Megatron treats "<|endoftext|>" in the text as plain characters; only the id of that vocabulary
entry is used, as the end-of-document id appended by the preprocessing tool.

Two backends give identical ids: "python" (this module: a per-word cache makes repeated words a
dict lookup; the default, as it measured faster) and "hf" (the HF `tokenizers` ByteLevel BPE
built from the same two files).
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import regex

from ._backend import TwoBackendTokenizer, resolve_backend

logger = logging.getLogger(__name__)

GPT2_PRETOKENIZE_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
"""The GPT-2 pre-tokenization regex (needs the `regex` package for \\p{L} / \\p{N})."""

ENDOFTEXT = "<|endoftext|>"


def bytes_to_unicode() -> Dict[int, str]:
    """The GPT-2 byte -> printable character table.

    Bytes that are printable in Latin-1 ("!".."~", "¡".."¬", "®".."ÿ") map to themselves; the
    remaining 68 bytes (controls, space, NBSP, soft hyphen...) map to chr(256), chr(257), ... in
    byte order. The table is a bijection, so BPE symbols are ordinary strings without spaces.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def load_merges(path: str) -> List[Tuple[str, str]]:
    """Read merges.txt: an optional "#version" header, then one "left right" pair a line."""
    merges = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(
                    f"--merge-file {path!r} line {lineno}: expected 'left right', got {line!r}"
                )
            merges.append((parts[0], parts[1]))
    return merges


def load_vocab_json(path: str) -> Dict[str, int]:
    """Read vocab.json (token -> id)."""
    with open(path, encoding="utf-8") as f:
        try:
            vocab = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"--vocab-file {path!r} is not valid JSON ({exc}); it must be the GPT-2 "
                "vocab.json (token -> id), the merges.txt goes to --merge-file"
            ) from None
    if not isinstance(vocab, dict):
        raise ValueError(f"--vocab-file {path!r} must hold a JSON object token -> id")
    return {str(k): int(v) for k, v in vocab.items()}


class BytePairEncoder:
    """Pure-Python byte-level BPE with a bounded per-word cache."""

    def __init__(self, vocab: Dict[str, int], merges: Sequence[Tuple[str, str]], cache_size: int):
        self.encoder = vocab
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.pattern = regex.compile(GPT2_PRETOKENIZE_PATTERN)
        byte_table = bytes_to_unicode()
        # str.translate over the latin-1 decoding of the UTF-8 bytes = byte-to-unicode per byte.
        self.translation = byte_table
        byte_decoder = {c: b for b, c in byte_table.items()}
        size = max(vocab.values()) + 1 if vocab else 0
        self.id_bytes: List[Optional[bytes]] = [None] * size
        for token, idx in vocab.items():
            if all(c in byte_decoder for c in token):
                self.id_bytes[idx] = bytes(byte_decoder[c] for c in token)
            else:  # e.g. a special token added to a trained vocab; spell it as is
                self.id_bytes[idx] = token.encode("utf-8")
        self.cache: Dict[str, Tuple[int, ...]] = {}
        self.cache_size = cache_size

    def bpe(self, symbols: str) -> List[str]:
        """Merge the byte-symbols of one word by merge rank; returns the final symbols."""
        word = list(symbols)
        ranks = self.ranks
        while len(word) > 1:
            best_rank = None
            best = None
            for pair in zip(word, word[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, pair
            if best is None:
                break
            left, right = best
            merged = left + right
            out = []
            i, n = 0, len(word)
            while i < n:
                if i < n - 1 and word[i] == left and word[i + 1] == right:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        return word

    def encode_word(self, word: str) -> Tuple[int, ...]:
        """Ids of one pre-tokenized word (cached)."""
        symbols = word.encode("utf-8").decode("latin-1").translate(self.translation)
        try:
            ids = tuple(self.encoder[s] for s in self.bpe(symbols))
        except KeyError as e:
            raise ValueError(
                f"BPE symbol {e.args[0]!r} of word {word!r} is not in the vocabulary; the vocab "
                "and merges files do not belong together"
            ) from None
        if len(self.cache) >= self.cache_size:
            self.cache.clear()
        self.cache[word] = ids
        return ids

    def encode(self, text: str) -> List[int]:
        """Ids of ``text``."""
        get = self.cache.get
        encode_word = self.encode_word
        pieces = [get(w) or encode_word(w) for w in self.pattern.findall(text)]
        return list(itertools.chain.from_iterable(pieces))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; invalid UTF-8 (a multi-byte char cut between ids) becomes U+FFFD."""
        id_bytes = self.id_bytes
        try:
            data = b"".join([id_bytes[i] for i in ids])
        except (IndexError, TypeError):
            bad = [i for i in ids if not (0 <= i < len(id_bytes)) or id_bytes[i] is None]
            raise ValueError(f"token ids {bad[:10]} are not in the vocabulary") from None
        return data.decode("utf-8", errors="replace")


class GPT2BPETokenizer(TwoBackendTokenizer):
    """GPT-2 byte-level BPE from vocab.json + merges.txt.

    Args:
        vocab_file: vocab.json (token -> id).
        merge_file: merges.txt.
        backend: "python", "hf" or "auto" (see ``TokenizerConfig.tokenizer_backend``).
        cache_size: words kept in the Python backend's cache (cleared when full).
    """

    def __init__(
        self, vocab_file: str, merge_file: str, backend: str = "auto", cache_size: int = 1 << 18
    ):
        super().__init__("GPT2BPETokenizer")
        self.backend = resolve_backend(backend, self.name)
        self._vocab = load_vocab_json(vocab_file)
        self._inv_vocab = {i: t for t, i in self._vocab.items()}
        if ENDOFTEXT not in self._vocab:
            raise ValueError(
                f"--vocab-file {vocab_file!r} has no {ENDOFTEXT!r} entry, which GPT2BPETokenizer "
                "uses as its end-of-document id; train it with that special token "
                "(tools/train_tokenizer.py --type bpe does)"
            )
        self._eod = self._vocab[ENDOFTEXT]
        self._python = BytePairEncoder(self._vocab, load_merges(merge_file), cache_size)
        self._hf = _build_hf_bpe(vocab_file, merge_file) if self.backend == "hf" else None
        logger.info("GPT2BPETokenizer: %d ids, backend %s", len(self._vocab), self.backend)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._python.decode(ids)

    @property
    def eod(self) -> int:
        return self._eod

    @property
    def bos(self) -> int:
        """GPT-2 uses "<|endoftext|>" for beginning, end and document separator alike."""
        return self._eod

    @property
    def eos(self) -> int:
        return self._eod


def _build_hf_bpe(vocab_file: str, merge_file: str):
    """HF `tokenizers` ByteLevel BPE with GPT-2 settings; "<|endoftext|>" stays plain text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(vocab_file, merge_file))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok
