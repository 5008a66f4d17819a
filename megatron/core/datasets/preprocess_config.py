"""Options of the JSONL -> indexed dataset conversion (see `preprocess`)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, List, Tuple

logger = logging.getLogger(__name__)


TokenizerFactory = Callable[[], object]
"""Picklable callable returning a tokenizer (`.tokenize`, `.tokenize_batch`, `.vocab_size`,
`.eod`), e.g. `functools.partial(build_tokenizer, TokenizerConfig(...))`; each worker process
calls it once."""

SentenceSplitter = Callable[..., List[str]]
"""Picklable `splitter(text, keep_newlines=bool) -> sentences`, e.g.
`megatron.tokenizer.sentence_split.split_sentences`; with keep_newlines each sentence keeps the
whitespace that follows it."""


@dataclasses.dataclass
class PreprocessConfig:
    """How JSONL lines become documents and sequences."""

    json_keys: Tuple[str, ...] = ("text",)
    """Keys of each JSON object to convert; one output per key (--json-keys)."""

    split_sentences: bool = False
    """Write one sequence per sentence (level "sentence") instead of one per document
    (--split-sentences); needs a sentence splitter."""

    keep_newlines: bool = False
    """With split_sentences, keep the whitespace (newlines included) after each sentence
    (--keep-newlines)."""

    append_eod: bool = False
    """Append the tokenizer's end-of-document id to each document, to its last sentence when
    sentences are split (--append-eod)."""

    strict: bool = False
    """Fail on the first bad input line instead of skipping it (--strict)."""

    max_bad_lines_reported: int = 20
    """Bad lines listed per kind in the report; the rest are only counted
    (--max-bad-lines-reported)."""

    chunk_bytes: int = 1 << 18
    """Input lines are handed to workers in chunks of about this many bytes."""

    chunk_lines: int = 1024
    """...and at most this many lines."""

    log_interval: int = 1000
    """Call the progress callback about every this many documents (--log-interval): after the
    chunk in which the count passes each multiple; 0 disables it."""

    def __post_init__(self) -> None:
        self.json_keys = tuple(self.json_keys)
        if not self.json_keys or len(set(self.json_keys)) != len(self.json_keys):
            raise ValueError(f"--json-keys must be distinct and non-empty, got {self.json_keys}")
        if self.keep_newlines and not self.split_sentences:
            logger.warning("--keep-newlines has no effect without --split-sentences")
        if self.max_bad_lines_reported < 0:
            raise ValueError(
                f"--max-bad-lines-reported must be >= 0, got {self.max_bad_lines_reported}"
            )
        if self.chunk_bytes <= 0 or self.chunk_lines <= 0 or self.log_interval < 0:
            raise ValueError(
                f"chunk_bytes ({self.chunk_bytes}) and chunk_lines ({self.chunk_lines}) must be "
                f"positive and log_interval ({self.log_interval}) >= 0"
            )

    @property
    def level(self) -> str:
        """The level in the output names: "sentence" with split_sentences, else "document"."""
        return "sentence" if self.split_sentences else "document"


def output_prefix_for(output_prefix: str, key: str, level: str) -> str:
    """Megatron's output naming: `<output_prefix>_<key>_<level>`."""
    return f"{output_prefix}_{key}_{level}"
