"""Typed configuration of the tokenizer selected by --tokenizer-type.

The training application and the tools fill this from their command lines; the tokenizers only
ever see this object. Validation runs in ``__post_init__`` so a wrong flag fails before any heavy
work, with a message that names the flag and the fix.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

TOKENIZER_TYPES = (
    "GPT2BPETokenizer",
    "BertWordPieceLowerCase",
    "BertWordPieceCase",
    "SentencePieceTokenizer",
    "HuggingFaceTokenizer",
    "NullTokenizer",
)
"""Valid values of --tokenizer-type."""

TOKENIZER_BACKENDS = ("auto", "python", "hf")
"""Valid values of ``TokenizerConfig.tokenizer_backend``."""

_EXTRA_IDS_TYPES = ("BertWordPieceLowerCase", "BertWordPieceCase", "SentencePieceTokenizer")


@dataclasses.dataclass
class TokenizerConfig:
    """Which tokenizer to build and the files it reads; see ``build_tokenizer``."""

    tokenizer_type: str
    """One of GPT2BPETokenizer, BertWordPieceLowerCase, BertWordPieceCase, SentencePieceTokenizer,
    HuggingFaceTokenizer, NullTokenizer; --tokenizer-type."""

    vocab_file: Optional[str] = None
    """GPT-2 vocab.json or BERT vocab.txt (one token a line); --vocab-file."""

    merge_file: Optional[str] = None
    """GPT-2 BPE merges (merges.txt, one "left right" pair a line); --merge-file."""

    tokenizer_model: Optional[str] = None
    """SentencePiece model file (SentencePieceTokenizer), or a tokenizer.json file or a folder
    holding one (HuggingFaceTokenizer; local files only, nothing is downloaded);
    --tokenizer-model."""

    vocab_size: Optional[int] = None
    """Number of token ids of the NullTokenizer (its end-of-document id is this value, so the
    tokenizer has vocab_size + 1 ids); --vocab-size."""

    vocab_extra_ids: int = 0
    """Number of <extra_id_N> sentinel tokens appended to a BERT or SentencePiece vocabulary (T5
    style span corruption); --vocab-extra-ids."""

    tokenizer_backend: str = "auto"
    """Implementation of GPT2BPETokenizer / BertWordPiece*: "python" (our own code), "hf" (the HF
    `tokenizers` package; same ids) or "auto" (currently "python", measured 2-9x faster);
    --tokenizer-backend."""

    def __post_init__(self) -> None:
        if self.tokenizer_type not in TOKENIZER_TYPES:
            raise ValueError(
                f"--tokenizer-type {self.tokenizer_type!r} is not supported; "
                f"choose one of {', '.join(TOKENIZER_TYPES)}"
            )
        if self.tokenizer_backend not in TOKENIZER_BACKENDS:
            raise ValueError(
                f"--tokenizer-backend {self.tokenizer_backend!r} is not supported; "
                f"choose one of {', '.join(TOKENIZER_BACKENDS)}"
            )
        if self.vocab_extra_ids < 0:
            raise ValueError(f"--vocab-extra-ids must be >= 0, got {self.vocab_extra_ids}")
        if self.vocab_extra_ids and self.tokenizer_type not in _EXTRA_IDS_TYPES:
            raise ValueError(
                f"--vocab-extra-ids {self.vocab_extra_ids} is only supported by "
                f"{', '.join(_EXTRA_IDS_TYPES)}, not --tokenizer-type {self.tokenizer_type}; "
                "drop the flag"
            )
        kind = self.tokenizer_type
        if kind == "GPT2BPETokenizer":
            self._require_file("vocab_file", "--vocab-file", "the GPT-2 vocab.json")
            self._require_file("merge_file", "--merge-file", "the GPT-2 merges.txt")
            self._check_gpt2_files()
        elif kind.startswith("BertWordPiece"):
            self._require_file("vocab_file", "--vocab-file", "the BERT vocab.txt")
            if _first_line(self.vocab_file).startswith("{"):
                raise ValueError(
                    f"--vocab-file {self.vocab_file!r} looks like a GPT-2 vocab.json (it starts "
                    f"with '{{'); --tokenizer-type {kind} reads a BERT vocab.txt (one token a line)"
                )
        elif kind == "SentencePieceTokenizer":
            self._require_file("tokenizer_model", "--tokenizer-model", "the SentencePiece model")
        elif kind == "HuggingFaceTokenizer":
            self._check_hf_path()
        elif kind == "NullTokenizer":
            if self.vocab_size is None or int(self.vocab_size) <= 0:
                raise ValueError(
                    "--tokenizer-type NullTokenizer needs --vocab-size N (a positive number of "
                    f"token ids), got {self.vocab_size}"
                )

    def _require_file(self, field: str, flag: str, what: str) -> None:
        path = getattr(self, field)
        if path is None:
            raise ValueError(
                f"--tokenizer-type {self.tokenizer_type} needs {flag} (path to {what})"
            )
        if not os.path.isfile(path):
            raise ValueError(
                f"{flag} {path!r} does not exist or is not a file "
                f"(--tokenizer-type {self.tokenizer_type} reads {what} from it)"
            )

    def _check_gpt2_files(self) -> None:
        """A vocab.json starts with '{', a merges.txt does not: catch swapped or wrong files."""
        vocab, merges = _first_line(self.vocab_file), _first_line(self.merge_file)
        fix = "--vocab-file takes the GPT-2 vocab.json, --merge-file the merges.txt"
        if not vocab.startswith("{") and merges.startswith("{"):
            raise ValueError(
                f"--vocab-file {self.vocab_file!r} looks like a merges file and --merge-file "
                f"{self.merge_file!r} like a vocab.json: swap them ({fix})"
            )
        if not vocab.startswith("{"):
            what = "looks like a merges file" if _looks_like_merges(vocab) else "is not JSON"
            raise ValueError(
                f"--vocab-file {self.vocab_file!r} {what} (first line {vocab[:60]!r}); {fix}"
            )
        if merges.startswith("{"):
            raise ValueError(
                f"--merge-file {self.merge_file!r} looks like a vocab.json (it starts with '{{'); "
                f"{fix}"
            )

    def _check_hf_path(self) -> None:
        path = self.tokenizer_model
        if path is None:
            raise ValueError(
                "--tokenizer-type HuggingFaceTokenizer needs --tokenizer-model (a tokenizer.json "
                "file or a folder holding one)"
            )
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "tokenizer.json")):
                raise ValueError(
                    f"--tokenizer-model {path!r} is a folder without tokenizer.json; save the "
                    "tokenizer with tokenizer.save('tokenizer.json') (or "
                    "save_pretrained) into it"
                )
        elif not os.path.isfile(path):
            raise ValueError(
                f"--tokenizer-model {path!r} does not exist; HuggingFaceTokenizer only reads local "
                "files (nothing is downloaded): download the tokenizer.json beforehand and pass "
                "its path"
            )


def _first_line(path: str) -> str:
    """The first non-blank line of a text file (at most 4 KiB read), without a BOM."""
    with open(path, "rb") as f:
        head = f.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    return head.splitlines()[0] if head else ""


def _looks_like_merges(line: str) -> bool:
    """A merges.txt starts with "#version" or a "left right" pair."""
    return line.startswith("#version") or len(line.split(" ")) == 2
