#!/usr/bin/env python
"""Train a tokenizer on JSONL text and write files our --tokenizer-type options load.

    python tools/train_tokenizer.py --input austen.jsonl --type bpe --vocab-size 8000 \\
        --output-dir tok-bpe

Types:
  bpe            byte-level BPE (HF `tokenizers`): vocab.json + merges.txt (GPT2BPETokenizer, with
                 "<|endoftext|>" as the end-of-document token) and tokenizer.json
                 (HuggingFaceTokenizer).
  wordpiece      BERT WordPiece (HF `tokenizers`): vocab.txt with [PAD] [UNK] [CLS] [SEP] [MASK]
                 (BertWordPieceLowerCase, or BertWordPieceCase with --cased) and tokenizer.json.
  sentencepiece  SentencePiece (unigram or bpe, byte fallback): tokenizer.model
                 (SentencePieceTokenizer) with unk=0 bos=1 eos=2 pad=3 and the control symbols
                 <CLS> <SEP> <MASK>.

The output folder is written under a temporary name and renamed when complete. Nothing is
downloaded. At the end the flags that load the result are printed.
"""

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Iterator, List, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from megatron.tokenizer.sentence_split import split_sentences  # noqa: E402

BPE_SPECIAL_TOKENS = ["<|endoftext|>"]
WORDPIECE_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SENTENCEPIECE_CONTROL_SYMBOLS = ["<CLS>", "<SEP>", "<MASK>"]


def iter_texts(paths: Sequence[str], json_keys: Sequence[str]) -> Iterator[str]:
    """Yield the value of every --json-keys key of every line of every --input file."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"--input {path} line {lineno} is not valid JSON: {e}") from e
                for key in json_keys:
                    value = doc.get(key)
                    if isinstance(value, str) and value:
                        yield value


def iter_sentences(texts: Iterator[str]) -> Iterator[str]:
    """Lines of the texts, long lines cut into sentences (SentencePiece skips lines longer than
    its max_sentence_length)."""
    for text in texts:
        for line in text.splitlines():
            if len(line.encode("utf-8")) <= 2048:
                if line.strip():
                    yield line
            else:
                yield from split_sentences(line)


def train_bpe(texts: Iterator[str], args, out_dir: str) -> List[str]:
    """Byte-level BPE; returns the flags that load it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        special_tokens=BPE_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.model.save(out_dir)  # vocab.json + merges.txt
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    return [
        "--tokenizer-type GPT2BPETokenizer "
        f"--vocab-file {args.output_dir}/vocab.json --merge-file {args.output_dir}/merges.txt",
        f"--tokenizer-type HuggingFaceTokenizer --tokenizer-model {args.output_dir}/tokenizer.json",
    ]


def train_wordpiece(texts: Iterator[str], args, out_dir: str) -> List[str]:
    """BERT WordPiece; returns the flags that load it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    lower = not args.cased
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lower, lowercase=lower
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        special_tokens=WORDPIECE_SPECIAL_TOKENS,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.model.save(out_dir)  # vocab.txt
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    kind = "BertWordPieceCase" if args.cased else "BertWordPieceLowerCase"
    return [f"--tokenizer-type {kind} --vocab-file {args.output_dir}/vocab.txt"]


def train_sentencepiece(texts: Iterator[str], args, out_dir: str) -> List[str]:
    """SentencePiece; returns the flags that load it."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter_sentences(texts),
        model_prefix=os.path.join(out_dir, "tokenizer"),
        vocab_size=args.vocab_size,
        model_type=args.sp_model_type,
        character_coverage=args.sp_character_coverage,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        control_symbols=SENTENCEPIECE_CONTROL_SYMBOLS,
        input_sentence_size=args.sp_input_sentence_size,
        shuffle_input_sentence=True,
        hard_vocab_limit=False,
        num_threads=max(1, os.cpu_count() or 1),
        minloglevel=2,
    )
    model = f"{args.output_dir}/tokenizer.model"
    return [f"--tokenizer-type SentencePieceTokenizer --tokenizer-model {model}"]


TRAINERS = {"bpe": train_bpe, "wordpiece": train_wordpiece, "sentencepiece": train_sentencepiece}


def _install(tmp_dir: str, out_dir: pathlib.Path) -> None:
    """Rename the finished tmp_dir to out_dir, replacing an old out_dir only after that."""
    old = None
    if out_dir.exists():
        old = tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent)
        os.rmdir(old)
        os.rename(out_dir, old)
    os.rename(tmp_dir, out_dir)
    if old is not None:
        shutil.rmtree(old)


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", nargs="+", required=True, help="JSONL file(s) to train on")
    parser.add_argument(
        "--json-keys", nargs="+", default=["text"], help="keys of each JSON line to read text from"
    )
    parser.add_argument("--type", required=True, choices=sorted(TRAINERS), help="tokenizer kind")
    parser.add_argument("--vocab-size", type=int, required=True, help="target number of ids")
    parser.add_argument("--output-dir", required=True, help="folder to write (created)")
    parser.add_argument(
        "--min-frequency", type=int, default=2, help="bpe/wordpiece: min count of a merge/piece"
    )
    parser.add_argument("--cased", action="store_true", help="wordpiece: keep case and accents")
    parser.add_argument(
        "--sp-model-type", default="unigram", choices=["unigram", "bpe"], help="sentencepiece"
    )
    parser.add_argument("--sp-character-coverage", type=float, default=0.9995, help="sentencepiece")
    parser.add_argument(
        "--sp-input-sentence-size",
        type=int,
        default=10_000_000,
        help="sentencepiece: sample at most this many sentences (0 = all)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    args = parser.parse_args(argv)
    if args.vocab_size <= 0:
        parser.error(f"--vocab-size must be positive, got {args.vocab_size}")
    for path in args.input:
        if not os.path.isfile(path):
            parser.error(f"--input {path} does not exist")
    out = pathlib.Path(args.output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        parser.error(f"--output-dir {out} exists and is not empty; pass --overwrite to replace it")
    return args


def main(argv=None) -> int:
    args = get_args(argv)
    out_dir = pathlib.Path(args.output_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_dir, 0o777 & ~umask)  # mkdtemp makes it private; give it a normal folder's mode
    try:
        texts = iter_texts(args.input, args.json_keys)
        flags = TRAINERS[args.type](texts, args, tmp_dir)
        _install(tmp_dir, out_dir)
    finally:
        if os.path.exists(tmp_dir):
            shutil.rmtree(tmp_dir)
    print(f"wrote {args.type} tokenizer to {args.output_dir}: {sorted(os.listdir(out_dir))}")
    print("use it with:")
    for line in flags:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
