#!/usr/bin/env python
"""Tokenize JSON Lines into Megatron indexed datasets (.bin/.idx), one per json key.

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \\
        --tokenizer-type GPT2BPETokenizer --vocab-file gpt2-vocab.json \\
        --merge-file gpt2-merges.txt --append-eod --workers 8

Writes, for each key of --json-keys (default: text), `<output-prefix>_<key>_document.bin/.idx`
(`_sentence` with --split-sentences) and `<output-prefix>_<key>_<level>.token_counts.npy`, an int64
array [vocab_size] counting every token id of the output (appended end-of-document ids included),
read by the vocabulary-rarity curriculum metric. Token ids are uint16 when the vocabulary has fewer
than 65500 ids, else int32. The output does not depend on --workers or --partitions.

--input takes one or more files or glob patterns (read in the order given, each pattern's matches
sorted by name). Lines that cannot be used (not UTF-8, blank, invalid JSON, not an object, missing
key, value not a string, or no tokens) are skipped and listed with file:line in the final summary
(first --max-bad-lines-reported per kind); with --strict the first one ends the run with exit
status 1 and no output. Files appear only when complete (temporary names, then rename).

Newlines: without --split-sentences each document is tokenized as it is, newlines included. With
--split-sentences the whitespace between sentences is dropped, unless --keep-newlines keeps it at
the end of the sentence before it (Megatron's behaviour).

--partitions N cuts the input into N contiguous parts processed in parallel by N processes (each
with --workers / N tokenizing workers) and merges them in order. Progress goes to stderr every
--log-interval documents.
"""

import argparse
import functools
import glob
import logging
import os
import sys

sys.path.append(os.path.abspath(os.path.join(os.path.dirname(__file__), os.path.pardir)))

from megatron.core.datasets.bad_input import StrictModeError
from megatron.core.datasets.indexed_dataset import IndexedDatasetError  # noqa: E402
from megatron.core.datasets.preprocess import (
    PreprocessStats,
    preprocess_files,
    preprocess_partitioned,
)
from megatron.core.datasets.preprocess_config import PreprocessConfig
from megatron.core.datasets.token_counts import token_counts_path  # noqa: E402
from megatron.tokenizer import TokenizerConfig, build_tokenizer  # noqa: E402
from megatron.tokenizer.config import TOKENIZER_TYPES  # noqa: E402


def get_args(argv=None) -> argparse.Namespace:
    """Parse Megatron's preprocess_data flags (plus --strict and --max-bad-lines-reported)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_argument_group("input data")
    g.add_argument("--input", nargs="+", required=True, help="JSONL files or glob patterns")
    g.add_argument("--json-keys", nargs="+", default=["text"], help="keys to extract (text)")
    g.add_argument("--split-sentences", action="store_true", help="one sequence per sentence")
    g.add_argument("--keep-newlines", action="store_true", help="keep newlines between sentences")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    g.add_argument(
        "--vocab-file",
        "--vocab",  # Megatron-DeepSpeed's BERT data recipe spells it so (an ambiguous prefix)
        dest="vocab_file",
        help="GPT-2 vocab.json or BERT vocab.txt",
    )
    g.add_argument("--merge-file", help="GPT-2 merges.txt")
    g.add_argument("--tokenizer-model", help="SentencePiece model or HF tokenizer.json")
    g.add_argument("--vocab-size", type=int, help="NullTokenizer: number of token ids")
    g.add_argument("--append-eod", action="store_true", help="append <eod> to each document")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="outputs are <prefix>_<key>_<level>")
    g.add_argument(
        "--dataset-impl", default="mmap", choices=["mmap"], help="accepted for compatibility"
    )
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1, help="tokenizing processes (1)")
    g.add_argument("--partitions", type=int, default=1, help="input parts run in parallel (1)")
    g.add_argument("--log-interval", type=int, default=1000, help="progress every N documents")
    g.add_argument("--strict", action="store_true", help="fail (exit 1) on the first bad line")
    g.add_argument(
        "--max-bad-lines-reported", type=int, default=20, help="bad lines listed per kind (20)"
    )
    args = p.parse_args(argv)
    if args.workers < 1 or args.partitions < 1:
        p.error(f"--workers ({args.workers}) and --partitions ({args.partitions}) must be >= 1")
    out_dir = os.path.dirname(os.path.abspath(args.output_prefix))
    if not os.path.isdir(out_dir):
        p.error(f"--output-prefix {args.output_prefix}: folder {out_dir} does not exist; create it")
    return args


def expand_inputs(patterns) -> list:
    """Files named by --input: globs expanded (sorted), in the order given, without repeats."""
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise ValueError(f"--input {pattern!r} matches no file")
        for path in matches:
            if not os.path.isfile(path):
                raise ValueError(f"--input {path!r} is not a file")
            if path not in paths:
                paths.append(path)
    return paths


def print_progress(stats: PreprocessStats, label: str) -> None:
    """Progress line on stderr."""
    where = f"[{label}] " if label else ""
    print(
        f"{where}processed {stats.documents} documents ({stats.rates()}), "
        f"{stats.bad_lines} bad lines",
        file=sys.stderr,
        flush=True,
    )


def print_summary(result, args) -> None:
    """Final summary on stderr: totals, rates, outputs, bad lines."""
    s = result.stats
    print(
        f"done: {s.documents} documents, {result.sequences} sequences, {s.tokens} tokens from "
        f"{s.bytes / 1e6:.2f} MB in {s.elapsed:.2f} s ({s.rates()}), workers={args.workers}, "
        f"partitions={args.partitions}",
        file=sys.stderr,
    )
    for prefix in result.outputs:
        print(
            f"  wrote {prefix}.bin, {prefix}.idx, {os.path.basename(token_counts_path(prefix))}",
            file=sys.stderr,
        )
    for line in result.report.summary_lines():
        print(line, file=sys.stderr)


def main(argv=None) -> int:
    """Run the tool; returns the exit status (0 ok, 1 failure)."""
    args = get_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    try:
        paths = expand_inputs(args.input)
        tokenizer_config = TokenizerConfig(
            tokenizer_type=args.tokenizer_type,
            vocab_file=args.vocab_file,
            merge_file=args.merge_file,
            tokenizer_model=args.tokenizer_model,
            vocab_size=args.vocab_size,
        )
        config = PreprocessConfig(
            json_keys=tuple(args.json_keys),
            split_sentences=args.split_sentences,
            keep_newlines=args.keep_newlines,
            append_eod=args.append_eod,
            strict=args.strict,
            max_bad_lines_reported=args.max_bad_lines_reported,
            log_interval=args.log_interval,
        )
        splitter = None
        if args.split_sentences:
            from megatron.tokenizer.sentence_split import split_sentences as splitter
        common = dict(
            tokenizer_factory=functools.partial(build_tokenizer, tokenizer_config),
            config=config,
            workers=args.workers,
            sentence_splitter=splitter,
            on_progress=print_progress,
        )
        if args.partitions > 1:
            result = preprocess_partitioned(
                paths, args.output_prefix, partitions=args.partitions, **common
            )
        else:
            result = preprocess_files(paths, args.output_prefix, **common)
    except (StrictModeError, ValueError, OSError, RuntimeError, IndexedDatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_summary(result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
