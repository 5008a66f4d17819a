"""JSONL -> indexed dataset conversion (library side of tools/preprocess_data.py).

`tools/preprocess_data.py` and `tools/merge_datasets.py` are thin command-line wrappers around
`preprocess_files`, `preprocess_partitioned` and `merge.merge_datasets`. The options are in
`preprocess_config`, the chunked reading and tokenisation in `document_encoder`, bad input lines
in `bad_input`.

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
run removes its temporaries, and the next run removes those of a killed one
(`megatron.core.files.remove_stale_temporaries_beside`).

Newlines: without sentence splitting the document text is tokenized exactly as it is, newlines
included (Megatron's identity splitter). With sentence splitting the whitespace between sentences,
newlines included, is dropped; with `keep_newlines` it stays at the end of the sentence before it,
so the sentences concatenate back to the document text (less its leading whitespace), as Megatron's
keep-newlines splitter does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron.core.datasets.bad_input import BadInputReport, StrictModeError
from megatron.core.datasets.document_encoder import (
    ChunkResult,
    DocumentEncoder,
    EncodedKey,
    count_lines,
    iter_line_chunks,
    ordered_results,
)
from megatron.core.datasets.indexed_dataset import (
    IndexedDatasetBuilder,
    data_file_path,
    index_file_path,
)
from megatron.core.datasets.merge import merge_datasets
from megatron.core.datasets.preprocess_config import (
    PreprocessConfig,
    SentenceSplitter,
    TokenizerFactory,
    output_prefix_for,
)
from megatron.core.datasets.token_counts import save_token_counts, token_counts_path
from megatron.core.files import remove_stale_temporaries_beside, temporary_path

logger = logging.getLogger(__name__)


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
    remove_stale_temporaries_beside(output_prefix)
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
        with contextlib.closing(ordered_results(encoder, chunks, workers, init_args)) as results:
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
    remove_stale_temporaries_beside(output_prefix)
    total = sum(count_lines(p) for p in paths)
    bounds = [total * i // partitions for i in range(partitions + 1)]
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    tmp_dir = temporary_path(os.path.join(out_dir, f".{os.path.basename(output_prefix)}.parts"))
    os.makedirs(tmp_dir)
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
