#!/usr/bin/env python
"""Write the data of the local lm-evaluation-harness tasks in megatron/evaluation/tasks/.

Both come from the last chapter of each novel of the embedded Austen corpus (data/corpora/austen),
taken in a fixed order, so the output is the same on every run:

- lambada_austen.jsonl: LAMBADA-style passages {"text": ...}: whole sentences of one paragraph
  (20 to 80 words), the task predicts the last word from the words before it;
- austen_ppl.jsonl: held-out paragraphs {"text": ...} of 60 to 250 words, for perplexity.

    python tools/make_lm_eval_tasks.py            # rewrites the two files
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.austen_to_jsonl import DEFAULT_DIR, iter_documents

TASK_DIR = pathlib.Path(__file__).resolve().parents[1] / "megatron" / "evaluation" / "tasks"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
LAST_WORD = re.compile(r"^[A-Za-z]{3,}[.!?]$")


def last_chapters(corpus_dir: pathlib.Path):
    """Paragraph lists of the last chapter of each novel, in file order."""
    last = {}
    for doc in iter_documents(corpus_dir):
        last[doc["title"]] = doc["text"].split("\n\n")
    return list(last.values())


def lambada_passage(paragraph: str):
    """The longest run of the paragraph's first sentences with 20-80 words whose last word is
    plain (letters, then the sentence's full stop), without that punctuation; or None."""
    best, words = None, []
    for sentence in SENTENCE_END.split(paragraph):
        words = words + sentence.split()
        if len(words) > 80:
            break
        if len(words) >= 20 and LAST_WORD.match(words[-1]):
            best = " ".join(words)[:-1]
    return best


def round_robin(lists, limit):
    """Items of the lists taken in turn, at most `limit`."""
    out, i = [], 0
    while len(out) < limit and any(i < len(x) for x in lists):
        out.extend(x[i] for x in lists if i < len(x))
        i += 1
    return out[:limit]


def write(path: pathlib.Path, texts) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus-dir", default=str(DEFAULT_DIR))
    p.add_argument("--output-dir", default=str(TASK_DIR))
    p.add_argument("--lambada", type=int, default=60, help="passages of lambada_austen")
    p.add_argument("--ppl", type=int, default=24, help="paragraphs of austen_ppl")
    a = p.parse_args(argv)
    chapters = last_chapters(pathlib.Path(a.corpus_dir))
    lambada = [[x for x in map(lambada_passage, ch) if x] for ch in chapters]
    ppl = [[x for x in ch if 60 <= len(x.split()) <= 250] for ch in chapters]
    out = pathlib.Path(a.output_dir)
    write(out / "lambada_austen.jsonl", round_robin(lambada, a.lambada))
    write(out / "austen_ppl.jsonl", round_robin(ppl, a.ppl))
    print(f"wrote {out}/lambada_austen.jsonl and austen_ppl.jsonl", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
