"""Reading JSONL in chunks of lines and turning them into token arrays, in worker processes.

`iter_line_chunks` cuts the input into chunks of whole lines; `DocumentEncoder` (one per worker)
decodes, validates, splits and tokenizes the documents of a chunk; `ordered_results` runs the
chunks on a pool and yields their results in input order.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from megatron.core.datasets.bad_input import BadLine, BadLineKind
from megatron.core.datasets.indexed_dataset import (
    DType,
)
from megatron.core.datasets.preprocess_config import PreprocessConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LineChunk:
    """Consecutive raw lines of one input file; `first_line` is 1-based."""

    path: str
    first_line: int
    lines: List[bytes]


@dataclasses.dataclass
class EncodedKey:
    """Encoded documents of one json key in a chunk."""

    tokens: np.ndarray
    """All tokens, document after document, in the output dtype."""
    sequence_lengths: np.ndarray
    """int64 [sequences]: tokens per sequence (sentence or document)."""
    document_sequences: np.ndarray
    """int64 [documents]: sequences per document."""


@dataclasses.dataclass
class ChunkResult:
    """What a worker returns for one `LineChunk`."""

    outputs: Dict[str, EncodedKey]
    bad: List[BadLine]
    documents: int
    bytes: int


_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean"}


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "number"
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _describe_failure(text: str, error: Exception) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON "\ud800" escapes decode to lone surrogates
        return f"lone surrogate {text[e.start]!a} at character {e.start + 1} is not valid Unicode"
    return f"{type(error).__name__}: {error}"


def _flatten(ids: List[List[int]]) -> Tuple[np.ndarray, np.ndarray]:
    """int64 tokens of all lists back to back, and the length of each list."""
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=lengths.sum())
    return flat, lengths


class DocumentEncoder:
    """Turns chunks of raw JSONL lines into token arrays (runs in each worker process).

    Args:
        tokenizer: object with `tokenize`, `vocab_size`, `eod` (and optionally `tokenize_batch`).
        config: the preprocessing options.
        sentence_splitter: text -> sentences; required when `config.split_sentences`.
    """

    def __init__(self, tokenizer, config: PreprocessConfig, sentence_splitter=None):
        if config.split_sentences and sentence_splitter is None:
            raise ValueError("--split-sentences needs a sentence splitter; none was given")
        self.tokenizer = tokenizer
        self.config = config
        self.splitter = sentence_splitter
        self.vocab_size = int(tokenizer.vocab_size)
        self.eod = int(tokenizer.eod) if config.append_eod else None
        self.dtype = DType.optimal_token_dtype(self.vocab_size)

    def parse_line(self, raw: bytes, path: str, line: int):
        """The pieces of text per key of one line, or the `BadLine` saying why it is unusable."""

        def bad(kind, detail):
            return BadLine(path, line, kind, detail)

        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return bad(BadLineKind.INVALID_UTF8, f"byte 0x{raw[e.start]:02x} at byte {e.start + 1}")
        if line == 1 and text.startswith("\ufeff"):
            text = text[1:]  # UTF-8 byte-order mark
        if not text.strip():
            return bad(BadLineKind.BLANK_LINE, "line is empty or whitespace only")
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as e:
            return bad(BadLineKind.INVALID_JSON, str(e) or type(e).__name__)
        if not isinstance(obj, dict):
            return bad(BadLineKind.NOT_OBJECT, f"got a JSON {_json_type(obj)}")
        pieces = {}
        for key in self.config.json_keys:
            if key not in obj:
                keys = ", ".join(repr(k) for k in list(obj)[:5])
                return bad(BadLineKind.MISSING_KEY, f"no key {key!r} (keys: {keys or 'none'})")
            value = obj[key]
            if isinstance(value, str):
                try:
                    pieces[key] = self.split(value)
                except Exception as e:  # noqa: BLE001 - a splitter failure is bad input
                    return bad(BadLineKind.TOKENIZER_ERROR, f"sentence splitter: {e!r}")
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                pieces[key] = value  # already split into sentences (Megatron accepts this)
            else:
                return bad(
                    BadLineKind.NOT_STRING,
                    f"{key!r} is a JSON {_json_type(value)}, expected a string or list of strings",
                )
        return pieces

    def split(self, text: str) -> List[str]:
        """The pieces tokenized separately: the sentences, or the whole text."""
        if not self.config.split_sentences:
            return [text]
        return list(self.splitter(text, keep_newlines=self.config.keep_newlines))

    def tokenize_pieces(self, pieces: List[str]) -> Tuple[np.ndarray, np.ndarray, Dict[int, str]]:
        """Tokens of all pieces back to back, tokens per piece, and {piece: error} for failures."""
        errors: Dict[int, str] = {}
        try:
            batch = getattr(self.tokenizer, "tokenize_batch", None)
            ids = batch(pieces) if batch is not None and len(pieces) > 1 else None
            if ids is None:
                ids = [self.tokenizer.tokenize(p) for p in pieces]
        except Exception:  # find the failing pieces one by one; the others still count
            ids = []
            for i, piece in enumerate(pieces):
                try:
                    ids.append(self.tokenizer.tokenize(piece))
                except Exception as e:  # noqa: BLE001 - any tokenizer failure is bad input
                    errors[i] = _describe_failure(piece, e)
                    ids.append([])
        try:
            flat, lengths = _flatten(ids)
        except (OverflowError, TypeError, ValueError):  # e.g. NullTokenizer on "1" * 30
            for i, piece_ids in enumerate(ids):
                try:
                    _flatten([piece_ids])
                except (OverflowError, TypeError, ValueError) as e:
                    errors[i] = f"token ids not 64-bit integers ({e})"
                    ids[i] = []
            flat, lengths = _flatten(ids)
        out_of_range = (flat < 0) | (flat >= self.vocab_size)
        if out_of_range.any():
            piece_of_token = np.repeat(np.arange(len(pieces)), lengths)
            for t in np.flatnonzero(out_of_range):
                errors.setdefault(
                    int(piece_of_token[t]),
                    f"token id {flat[t]} outside the vocabulary [0, {self.vocab_size})",
                )
        return flat, lengths, errors

    def encode_chunk(self, chunk: LineChunk) -> ChunkResult:
        """Encode every usable line of `chunk`; report the others."""
        keys = self.config.json_keys
        docs, bad = [], []
        for i, raw in enumerate(chunk.lines):
            parsed = self.parse_line(raw, chunk.path, chunk.first_line + i)
            (bad if isinstance(parsed, BadLine) else docs).append((chunk.first_line + i, parsed))
        bad = [b for _, b in bad]
        flat_pieces = [p for _, pieces in docs for key in keys for p in pieces[key]]
        tokens, lengths, errors = self.tokenize_pieces(flat_pieces)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        parts = {key: ([], [], []) for key in keys}  # token arrays, sequence lengths, doc sizes
        piece, n_docs = 0, 0
        for line, pieces in docs:
            spans, problem = [], None
            for key in keys:
                span = range(piece, piece + len(pieces[key]))
                piece += len(pieces[key])
                failed = [errors[p] for p in span if p in errors]
                seq = [int(lengths[p]) for p in span if lengths[p] > 0]
                if failed and problem is None:
                    problem = (BadLineKind.TOKENIZER_ERROR, f"{key!r}: {failed[0]}")
                elif not seq and problem is None:
                    problem = (BadLineKind.EMPTY_DOCUMENT, f"{key!r} has no tokens")
                spans.append((key, span, seq))
            if problem is not None:
                bad.append(BadLine(chunk.path, line, *problem))
                continue
            n_docs += 1
            for key, span, seq in spans:
                toks = tokens[offsets[span.start] : offsets[span.stop]]
                if self.eod is not None:
                    toks = np.append(toks, self.eod)
                    seq[-1] += 1
                parts[key][0].append(toks)
                parts[key][1].extend(seq)
                parts[key][2].append(len(seq))
        bad.sort(key=lambda b: b.line)
        return ChunkResult(
            outputs={key: self._pack(*parts[key]) for key in keys},
            bad=bad,
            documents=n_docs,
            bytes=sum(len(raw) for raw in chunk.lines),
        )

    def _pack(self, token_parts, seq_lengths, doc_sequences) -> EncodedKey:
        tokens = np.concatenate(token_parts) if token_parts else np.zeros(0, np.int64)
        return EncodedKey(
            tokens=tokens.astype(self.dtype),
            sequence_lengths=np.asarray(seq_lengths, dtype=np.int64),
            document_sequences=np.asarray(doc_sequences, dtype=np.int64),
        )


def count_lines(path: str) -> int:
    """Number of lines of a file (a last line without a newline counts)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 24)
            if not block:
                break
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def iter_line_chunks(
    paths: Sequence[str], config: PreprocessConfig, line_range: Optional[Tuple[int, int]] = None
) -> Iterator[LineChunk]:
    """Chunks of raw lines of `paths` in order; `line_range`: lines [start, stop) of all files."""
    start, stop = line_range if line_range is not None else (0, float("inf"))
    seen = 0  # lines of all files before the current line
    for path in paths:
        if seen >= stop:
            return
        lines, size, first = [], 0, None
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                seen += 1
                if seen <= start:
                    continue
                if seen > stop:
                    break
                if first is None:
                    first = number
                lines.append(raw)
                size += len(raw)
                if size >= config.chunk_bytes or len(lines) >= config.chunk_lines:
                    yield LineChunk(path, first, lines)
                    lines, size, first = [], 0, None
        if lines:
            yield LineChunk(path, first, lines)


_WORKER_STATE: dict = {}  # only set inside pool worker processes, by _init_worker


def _init_worker(tokenizer_factory, config, sentence_splitter) -> None:
    # --workers sets the parallelism: keep HF `tokenizers` from starting a thread per core in
    # every worker (in-process tokenizing with workers=1 may still use its threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _WORKER_STATE["encoder"] = DocumentEncoder(tokenizer_factory(), config, sentence_splitter)


def _encode_in_worker(chunk: LineChunk) -> ChunkResult:
    return _WORKER_STATE["encoder"].encode_chunk(chunk)


def ordered_results(encoder, chunks, workers, init_args) -> Iterator[ChunkResult]:
    """Encode chunks in input order, in a pool of `workers` processes when workers > 1.

    Like `Pool.imap` but with at most 2 * workers chunks in flight: imap reads its whole input
    ahead, which would hold all of a large file in memory.
    """
    if workers <= 1:
        for chunk in chunks:
            yield encoder.encode_chunk(chunk)
        return
    pool = multiprocessing.get_context().Pool(workers, _init_worker, init_args)
    try:
        pending = collections.deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()
