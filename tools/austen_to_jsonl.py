#!/usr/bin/env python
"""Turn the embedded Jane Austen corpus (data/corpora/austen/*.txt.xz) into JSONL.

One JSON object per chapter: {"id": "emma-001", "title": "Emma", "chapter": 1, "text": ...}.
Front matter (title page, prefaces), volume headings and end matter ("THE END", "FINIS", editorial
notes) are dropped. Hard-wrapped lines are joined into one line per paragraph and paragraphs are
separated by a blank line; `--keep-line-breaks` keeps the original wrapping.

    python tools/austen_to_jsonl.py --output austen.jsonl
"""

import argparse
import json
import lzma
import os
import pathlib
import re
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO_ROOT / "data" / "corpora" / "austen"

TITLES = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}

CHAPTER_RE = re.compile(r"^(?:CHAPTER|Chapter)\s+([IVXLC]+|\d+)\.?\s*$")
VOLUME_RE = re.compile(r"^(?:VOLUME|Volume)\s+[IVXLC\d]+\.?\s*$")
END_RE = re.compile(r"^(?:THE END|FINIS|Finis|A NOTE ON THE TEXT)\s*$")


def split_chapters(text: str):
    """Yield (chapter_number, chapter_lines) in order; numbering counts chapters in the book."""
    chapter_lines = None
    number = 0
    for line in text.splitlines():
        if END_RE.match(line):
            break
        if CHAPTER_RE.match(line):
            if chapter_lines is not None:
                yield number, chapter_lines
            number += 1
            chapter_lines = []
        elif chapter_lines is not None and not VOLUME_RE.match(line):
            chapter_lines.append(line)
    if chapter_lines is not None:
        yield number, chapter_lines


def paragraphs(lines, keep_line_breaks: bool) -> str:
    """Join lines into paragraphs separated by one blank line."""
    paras, cur = [], []
    for line in lines:
        if line.strip():
            cur.append(line.rstrip() if keep_line_breaks else line.strip())
        elif cur:
            paras.append(("\n" if keep_line_breaks else " ").join(cur))
            cur = []
    if cur:
        paras.append(("\n" if keep_line_breaks else " ").join(cur))
    return "\n\n".join(paras)


def iter_documents(corpus_dir: pathlib.Path, keep_line_breaks: bool = False):
    """Yield one dict per chapter of every novel found in corpus_dir, in a fixed order."""
    files = sorted(corpus_dir.glob("*.txt.xz"))
    if not files:
        raise FileNotFoundError(f"no *.txt.xz files in {corpus_dir}")
    for path in files:
        key = path.name[: -len(".txt.xz")]
        with lzma.open(path, "rt", encoding="utf-8") as f:
            text = f.read()
        for number, lines in split_chapters(text):
            body = paragraphs(lines, keep_line_breaks)
            if body:
                yield {
                    "id": f"{key}-{number:03d}",
                    "title": TITLES.get(key, key),
                    "chapter": number,
                    "text": body,
                }


def write_jsonl(output: str, corpus_dir: pathlib.Path = DEFAULT_DIR, keep_line_breaks=False) -> int:
    """Write the corpus as JSONL (atomically); returns the number of documents."""
    tmp = f"{output}.tmp-{os.getpid()}"
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for doc in iter_documents(corpus_dir, keep_line_breaks):
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="JSONL file to write")
    parser.add_argument("--corpus-dir", default=str(DEFAULT_DIR), help="folder of *.txt.xz novels")
    parser.add_argument(
        "--keep-line-breaks", action="store_true", help="keep the original hard-wrapped lines"
    )
    args = parser.parse_args(argv)
    n = write_jsonl(args.output, pathlib.Path(args.corpus_dir), args.keep_line_breaks)
    print(f"wrote {n} chapters to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
