"""JSONL -> indexed dataset conversion and dataset merging (library side of tools/).

`tools/preprocess_data.py` and `tools/merge_datasets.py` are thin command-line wrappers around
`preprocess_files`, `preprocess_partitioned` and `merge_datasets`.

Input: JSON Lines, read in binary and decoded per line, so one bad line never stops a run. For each
key of `PreprocessConfig.json_keys` the value is a string (one document), or a list of strings
(sentences already split, as Megatron accepts). Lines that cannot be used are skipped, counted by
`BadLineKind` and reported with their file and line number (`BadInputReport`); with
`PreprocessConfig.strict` the first one raises `StrictModeError` instead. A line whose text has no
tokens (empty string, or only text the tokenizer drops) is skipped as an "empty document" (Megatron
writes it as a document of zero sequences; we never write one). With several json keys a line is
skipped for every key as soon as it is bad for one, so document i of every output comes from the
same input line.

Outputs, per json key (Megatron's naming): `<prefix>_<key>_<level>.bin/.idx` with level "document",
or "sentence" when sentences are split, plus `<prefix>_<key>_<level>.token_counts.npy` (see
`token_counts`). Every file is written under a temporary name and renamed when complete; a failed
run removes its temporaries.

Newlines: without sentence splitting the document text is tokenized exactly as it is, newlines
included (Megatron's identity splitter). With sentence splitting the whitespace between sentences,
newlines included, is dropped; with `keep_newlines` it stays at the end of the sentence before it,
so the sentences concatenate back to the document text (less its leading whitespace), as Megatron's
keep-newlines splitter does.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import itertools
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from megatron.core.datasets.indexed_dataset import (
    DType,
    IndexedDataset,
    IndexedDatasetBuilder,
    IndexedDatasetError,
    data_file_path,
    index_file_path,
)
from megatron.core.datasets.token_counts import (
    save_token_counts,
    sum_token_counts,
    temporary_path,
    token_counts_path,
)

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


# ----------------------------------------------------------------------------- bad input


class BadLineKind(str, enum.Enum):
    """Why an input line was skipped."""

    INVALID_UTF8 = "invalid UTF-8"
    BLANK_LINE = "blank line"
    INVALID_JSON = "invalid JSON"
    NOT_OBJECT = "not a JSON object"
    MISSING_KEY = "missing key"
    NOT_STRING = "value not a string"
    EMPTY_DOCUMENT = "empty document"
    TOKENIZER_ERROR = "tokenizer error"


@dataclasses.dataclass(frozen=True)
class BadLine:
    """One skipped input line: `path:line: kind: detail`."""

    path: str
    line: int
    kind: BadLineKind
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind.value}: {self.detail}"


class StrictModeError(ValueError):
    """Raised in strict mode at the first bad input line."""

    def __init__(self, message: str):
        super().__init__(message)

    @classmethod
    def from_bad_line(cls, bad: BadLine) -> "StrictModeError":
        """The error for `bad`, naming file:line and the problem."""
        return cls(f"{bad} (--strict stops at the first bad line; drop it to skip bad lines)")


class BadInputReport:
    """Bad lines counted per kind; the first `max_reported` of each kind are kept for the report."""

    def __init__(self, max_reported: int = 20):
        self.max_reported = max_reported
        self.counts: Dict[BadLineKind, int] = collections.Counter()
        self.examples: Dict[BadLineKind, List[BadLine]] = collections.defaultdict(list)

    def add(self, bad: BadLine) -> None:
        """Count one bad line (in input order)."""
        self.counts[bad.kind] += 1
        if len(self.examples[bad.kind]) < self.max_reported:
            self.examples[bad.kind].append(bad)

    def merge(self, other: "BadInputReport") -> None:
        """Append the lines of a report that covers later input."""
        for kind, n in other.counts.items():
            self.counts[kind] += n
            room = self.max_reported - len(self.examples[kind])
            self.examples[kind].extend(other.examples.get(kind, [])[: max(room, 0)])

    @property
    def total(self) -> int:
        """Number of bad lines."""
        return sum(self.counts.values())

    def summary_lines(self) -> List[str]:
        """Human-readable report: per kind the count, the first lines, then "... and N more"."""
        if not self.total:
            return ["bad input lines: none"]
        out = [f"bad input lines skipped: {self.total}"]
        for kind in BadLineKind:
            n = self.counts.get(kind, 0)
            if not n:
                continue
            out.append(f"  {kind.value}: {n} line{'s' if n > 1 else ''}")
            shown = self.examples.get(kind, [])
            out.extend(f"    {bad.path}:{bad.line}: {bad.detail}" for bad in shown)
            if n > len(shown):
                out.append(f"    ... and {n - len(shown)} more")
        return out


# ----------------------------------------------------------------------------- encoding


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


# ----------------------------------------------------------------------------- reading input


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


def _ordered_results(encoder, chunks, workers, init_args) -> Iterator[ChunkResult]:
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


# ----------------------------------------------------------------------------- writing


class OutputWriter:
    """One output: `<prefix>.bin/.idx` plus `<prefix>.token_counts.npy`, all atomic."""

    def __init__(self, path_prefix: str, dtype, vocab_size: int):
        self.path_prefix = path_prefix
        self.counts = np.zeros(vocab_size, dtype=np.int64)
        self.sequences = 0
        self.documents = 0
        self.tokens = 0
        self._builder = IndexedDatasetBuilder(data_file_path(path_prefix), dtype=dtype)
        self._counts_tmp = temporary_path(token_counts_path(path_prefix))

    def add(self, encoded: EncodedKey) -> None:
        """Append the documents of one chunk."""
        tokens, start, seq = encoded.tokens, 0, 0
        for n_seq in encoded.document_sequences:
            for length in encoded.sequence_lengths[seq : seq + n_seq]:
                self._builder.add_item(tokens[start : start + length])
                start += int(length)
            seq += int(n_seq)
            self._builder.end_document()
        self.counts += np.bincount(tokens, minlength=self.counts.size)[: self.counts.size]
        self.sequences += len(encoded.sequence_lengths)
        self.documents += len(encoded.document_sequences)
        self.tokens += tokens.size

    def finalize(self) -> None:
        """Move the dataset and its token counts to their final names."""
        final_counts = token_counts_path(self.path_prefix)
        save_token_counts(self._counts_tmp, self.counts)
        if os.path.exists(final_counts):
            os.remove(final_counts)  # never leave old counts beside new data
        self._builder.finalize(index_file_path(self.path_prefix))
        os.replace(self._counts_tmp, final_counts)

    def abort(self) -> None:
        """Remove everything written so far."""
        self._builder.abort()
        if os.path.exists(self._counts_tmp):
            os.remove(self._counts_tmp)


@dataclasses.dataclass
class PreprocessStats:
    """Throughput counters of a run (documents written, input bytes read, tokens written)."""

    documents: int = 0
    bytes: int = 0
    tokens: int = 0
    bad_lines: int = 0
    elapsed: float = 0.0

    def rates(self) -> str:
        """ "D docs/s, M MB/s, T tokens/s" over the elapsed time."""
        t = max(self.elapsed, 1e-9)
        return (
            f"{self.documents / t:.1f} docs/s, {self.bytes / t / 1e6:.2f} MB/s, "
            f"{self.tokens / t:.0f} tokens/s"
        )


@dataclasses.dataclass
class PreprocessResult:
    """Outcome of a preprocessing run."""

    outputs: List[str]
    """Dataset prefixes written, one per json key."""
    report: BadInputReport
    stats: PreprocessStats
    sequences: int = 0


ProgressCallback = Callable[[PreprocessStats, str], None]
"""Called with the running counters and a label ("" or "partition i/N")."""


def preprocess_files(
    paths: Sequence[str],
    output_prefix: str,
    tokenizer_factory: TokenizerFactory,
    config: PreprocessConfig,
    workers: int = 1,
    sentence_splitter: Optional[SentenceSplitter] = None,
    line_range: Optional[Tuple[int, int]] = None,
    on_progress: Optional[ProgressCallback] = None,
    label: str = "",
) -> PreprocessResult:
    """Tokenize JSONL files into one indexed dataset per json key.

    Args:
        paths: input files, read in this order.
        output_prefix: outputs are `<output_prefix>_<key>_<level>` (see module docstring).
        tokenizer_factory: builds the tokenizer (in this process and in each worker).
        config: the preprocessing options.
        workers: tokenizing processes; 1 tokenizes in this process. The output does not depend
            on it.
        sentence_splitter: text -> sentences, needed with `config.split_sentences`.
        line_range: only lines [start, stop) of the concatenated input (0-based).
        on_progress: called every `config.log_interval` documents.
        label: passed to `on_progress`.

    Raises:
        StrictModeError: with `config.strict`, at the first bad line; nothing is left behind.
    """
    start = time.monotonic()
    encoder = DocumentEncoder(tokenizer_factory(), config, sentence_splitter)
    writers: Dict[str, OutputWriter] = {}
    stats, report = PreprocessStats(), BadInputReport(config.max_bad_lines_reported)
    chunks = iter_line_chunks(paths, config, line_range)
    init_args = (tokenizer_factory, config, sentence_splitter)
    try:
        for key in config.json_keys:
            prefix = output_prefix_for(output_prefix, key, config.level)
            writers[key] = OutputWriter(prefix, encoder.dtype, encoder.vocab_size)
        # closing() shuts the worker pool down before the outputs are finalized or aborted
        with contextlib.closing(_ordered_results(encoder, chunks, workers, init_args)) as results:
            progress = _Progress(on_progress, config.log_interval, label, start)
            for result in results:
                if config.strict and result.bad:
                    raise StrictModeError.from_bad_line(result.bad[0])
                for key, writer in writers.items():
                    writer.add(result.outputs[key])
                for bad in result.bad:
                    report.add(bad)
                progress.update(stats, result, report.total)
        for writer in writers.values():
            writer.finalize()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    stats.elapsed = time.monotonic() - start
    sequences = sum(w.sequences for w in writers.values())
    return PreprocessResult([w.path_prefix for w in writers.values()], report, stats, sequences)


class _Progress:
    """Updates the counters after each chunk and calls the callback every `interval` documents."""

    def __init__(self, callback: Optional[ProgressCallback], interval: int, label: str, start):
        self.callback, self.interval, self.label, self.start = callback, interval, label, start
        self.next_log = interval

    def update(self, stats: PreprocessStats, result: ChunkResult, bad_lines: int) -> None:
        stats.documents += result.documents
        stats.bytes += result.bytes
        stats.tokens += sum(len(e.tokens) for e in result.outputs.values())
        stats.bad_lines = bad_lines
        stats.elapsed = time.monotonic() - self.start
        if self.callback is not None and self.interval and stats.documents >= self.next_log:
            self.callback(stats, self.label)
            self.next_log = (stats.documents // self.interval + 1) * self.interval


def _partition_main(conn, args: tuple, kwargs: dict) -> None:
    """Body of a partition process: run `preprocess_files` and send back the result or error."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run finally-blocks when terminated
    try:
        result = preprocess_files(*args, **kwargs)
        conn.send(("ok", result))
    except StrictModeError as e:
        conn.send(("strict", str(e)))
    except BaseException as e:  # noqa: BLE001 - forwarded to the parent, which re-raises
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def preprocess_partitioned(
    paths: Sequence[str],
    output_prefix: str,
    tokenizer_factory: TokenizerFactory,
    config: PreprocessConfig,
    partitions: int,
    workers: int = 1,
    sentence_splitter: Optional[SentenceSplitter] = None,
    on_progress: Optional[ProgressCallback] = None,
) -> PreprocessResult:
    """`preprocess_files` on `partitions` contiguous parts of the input in parallel, then merged.

    The input lines are cut into `partitions` contiguous ranges of (almost) equal line counts;
    each is processed by its own process with `max(1, workers // partitions)` workers into a
    temporary folder beside the output, and the parts are merged in order, so the result is
    byte-identical to an unpartitioned run. (Megatron deals lines round-robin to the partitions,
    which reorders the documents.) The temporary folder is removed whatever happens.
    """
    if partitions < 1:
        raise ValueError(f"--partitions must be >= 1, got {partitions}")
    start = time.monotonic()
    total = sum(count_lines(p) for p in paths)
    bounds = [total * i // partitions for i in range(partitions + 1)]
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(output_prefix)}.parts-", dir=out_dir)
    try:
        results = _run_partitions(
            paths, tmp_dir, tokenizer_factory, config, partitions, bounds,
            max(1, workers // partitions), sentence_splitter, on_progress,
        )  # fmt: skip
        outputs = []
        for key in config.json_keys:
            final = output_prefix_for(output_prefix, key, config.level)
            merge_datasets([r.outputs[config.json_keys.index(key)] for r in results], final)
            outputs.append(final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    report, stats = BadInputReport(config.max_bad_lines_reported), PreprocessStats()
    for r in results:
        report.merge(r.report)
        stats.documents += r.stats.documents
        stats.bytes += r.stats.bytes
        stats.tokens += r.stats.tokens
    stats.bad_lines = report.total
    stats.elapsed = time.monotonic() - start
    return PreprocessResult(outputs, report, stats, sum(r.sequences for r in results))


def _run_partitions(
    paths, tmp_dir, tokenizer_factory, config, partitions, bounds, workers, splitter, on_progress
) -> List[PreprocessResult]:
    """Start one process per partition; on a failure stop the later ones and raise the earliest."""
    ctx = multiprocessing.get_context()
    procs, conns = [], []
    for i in range(partitions):
        recv, send = ctx.Pipe(duplex=False)
        kwargs = dict(
            workers=workers,
            sentence_splitter=splitter,
            line_range=(bounds[i], bounds[i + 1]),
            on_progress=on_progress,
            label=f"partition {i + 1}/{partitions}",
        )
        prefix = os.path.join(tmp_dir, f"part{i:05d}")
        args = (list(paths), prefix, tokenizer_factory, config)
        proc = ctx.Process(target=_partition_main, args=(send, args, kwargs), daemon=False)
        proc.start()
        send.close()
        procs.append(proc)
        conns.append(recv)
    answers: Dict[int, tuple] = {}
    try:
        while len(answers) < partitions:
            waiting = [c for i, c in enumerate(conns) if i not in answers]
            for conn in multiprocessing.connection.wait(waiting):
                i = conns.index(conn)
                try:
                    answers[i] = conn.recv()
                except EOFError:
                    procs[i].join()
                    answers[i] = ("error", f"process died with exit code {procs[i].exitcode}")
                if answers[i][0] != "ok":  # later partitions cannot hold the first failure
                    for j in range(i + 1, partitions):
                        if j not in answers:
                            procs[j].terminate()
                            answers[j] = ("cancelled", "")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
    for i in range(partitions):
        status, payload = answers[i]
        if status == "strict":
            raise StrictModeError(payload)
        if status != "ok":
            raise RuntimeError(f"partition {i + 1}/{partitions} failed: {payload}")
    return [answers[i][1] for i in range(partitions)]


# ----------------------------------------------------------------------------- merging


def list_dataset_prefixes(directory: str) -> List[str]:
    """Prefixes of every `.bin`/`.idx` pair in `directory`, sorted by name.

    Raises:
        ValueError: the folder has a `.bin` without its `.idx` or the reverse, or no pair.
    """
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: not a directory")
    names = os.listdir(directory)
    bins = {n[:-4] for n in names if n.endswith(".bin")}
    idxs = {n[:-4] for n in names if n.endswith(".idx")}
    lonely = sorted(bins ^ idxs)
    if lonely:
        raise ValueError(
            f"{directory}: {', '.join(lonely)} has a .bin without .idx or the reverse; "
            "remove the stray file or list the prefixes to merge explicitly"
        )
    if not bins:
        raise ValueError(f"{directory}: no .bin/.idx pairs to merge")
    return [os.path.join(directory, n) for n in sorted(bins)]


def merge_datasets(prefixes: Sequence[str], output_prefix: str) -> Optional[str]:
    """Concatenate datasets (same dtype) into `output_prefix`, atomically.

    Token-count files are summed into `<output_prefix>.token_counts.npy` when every input has one
    (any stale one at the output is removed otherwise).

    Returns:
        The token-count file written, or None.

    Raises:
        IndexedDatasetError: an input is missing or corrupt.
        ValueError: no inputs, the output is one of the inputs, or the dtypes differ.
    """
    if not prefixes:
        raise ValueError("nothing to merge: no input prefixes")
    out = os.path.abspath(output_prefix)
    if any(os.path.abspath(p) == out for p in prefixes):
        raise ValueError(f"--output-prefix {output_prefix} is also an input; choose another name")
    dtypes = {p: IndexedDataset(p).dtype for p in prefixes}  # opening validates each input
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{p} ({d.name})" for p, d in dtypes.items())
        raise ValueError(
            f"cannot merge datasets of different dtypes: {listing}; re-run preprocessing with "
            "the same tokenizer for all of them"
        )
    count_files = [token_counts_path(p) for p in prefixes]
    have_counts = all(os.path.isfile(c) for c in count_files)
    if not have_counts and any(os.path.isfile(c) for c in count_files):
        logger.warning("not all inputs have a token-count file; the merged output gets none")
    counts = sum_token_counts(count_files) if have_counts else None
    final_counts, tmp_counts = token_counts_path(output_prefix), None
    with IndexedDatasetBuilder(data_file_path(output_prefix), dtype=dtypes[prefixes[0]]) as b:
        try:
            for p in prefixes:
                b.add_index(p)
            if counts is not None:
                tmp_counts = temporary_path(final_counts)
                save_token_counts(tmp_counts, counts)
            if os.path.exists(final_counts):
                os.remove(final_counts)
            b.finalize(index_file_path(output_prefix))
            if tmp_counts is not None:
                os.replace(tmp_counts, final_counts)
        finally:
            if tmp_counts is not None and os.path.exists(tmp_counts):
                os.remove(tmp_counts)
    return final_counts if counts is not None else None


__all__ = [
    "BadInputReport",
    "BadLine",
    "BadLineKind",
    "DocumentEncoder",
    "IndexedDatasetError",
    "PreprocessConfig",
    "PreprocessResult",
    "PreprocessStats",
    "StrictModeError",
    "count_lines",
    "iter_line_chunks",
    "list_dataset_prefixes",
    "merge_datasets",
    "output_prefix_for",
    "preprocess_files",
    "preprocess_partitioned",
]
