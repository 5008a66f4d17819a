"""The regex sentence splitter on crafted cases and on the Austen corpus."""

import re

import pytest

from megatron.tokenizer.sentence_split import sentence_spans, split_sentences

CASES = [
    ("Mr. Woodhouse was ill. He stayed at home.", ["Mr. Woodhouse was ill.", "He stayed at home."]),
    (
        "Mrs. Weston and Dr. Perry came. St. James's Park was near.",
        ["Mrs. Weston and Dr. Perry came.", "St. James's Park was near."],
    ),
    (
        'He said, "Go away." She went. "Really?" asked he. "Yes!" She left.',
        ['He said, "Go away."', "She went.", '"Really?" asked he.', '"Yes!"', "She left."],
    ),
    (
        "See e.g. the table, i.e. the first one. Then etc. Also viz. this.",
        ["See e.g. the table, i.e. the first one.", "Then etc.", "Also viz. this."],
    ),
    (
        "J. R. R. Tolkien wrote it. F. Scott agreed.",
        ["J. R. R. Tolkien wrote it.", "F. Scott agreed."],
    ),
    ("It costs 3.50 now. Pi is 3.14159. Done.", ["It costs 3.50 now.", "Pi is 3.14159.", "Done."]),
    (
        "Wait... What? I don't know… Let me see.",
        ["Wait...", "What?", "I don't know…", "Let me see."],
    ),
    ("He paused... and went on.", ["He paused... and went on."]),
    (
        "(See the note.) Then go on. [Really.] Ok.",
        ["(See the note.)", "Then go on.", "[Really.]", "Ok."],
    ),
    ("The U.S. Army came at 5 p.m. Nobody cared.", ["The U.S. Army came at 5 p.m. Nobody cared."]),
    ("Call No. 5 first. No. I will not.", ["Call No. 5 first.", "No.", "I will not."]),
    ("1. The first item. 2. The second.", ["1. The first item.", "2. The second."]),
    ("It was I. Then he left.", ["It was I.", "Then he left."]),
    ("always cheerful--Mr. Weston came.", ["always cheerful--Mr. Weston came."]),
    ('"Oh!" cried she. "Is it you?" said he.', ['"Oh!" cried she.', '"Is it you?" said he.']),
    ("“Curly quotes.” ‘Single ones.’ Done.", ["“Curly quotes.”", "‘Single ones.’", "Done."]),
    ("Between _them_ it was. _She_ said so.", ["Between _them_ it was.", "_She_ said so."]),
    (
        "Title without a stop\n\nFirst line. Second",
        ["Title without a stop", "First line.", "Second"],
    ),
    ("Hard wrapped\nline. Next\nline here.", ["Hard wrapped\nline.", "Next\nline here."]),
    ("这是第一句。这是第二句！真的吗？", ["这是第一句。", "这是第二句！", "真的吗？"]),
    ("lower case after stop. is not split", ["lower case after stop. is not split"]),
    ("  padded  ", ["padded"]),
    ("", []),
    (" \n\n ", []),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_crafted_cases(text, expected):
    assert split_sentences(text) == expected
    kept = split_sentences(text, keep_newlines=True)
    assert "".join(kept) == text.lstrip()
    assert [s.strip() for s in kept] == expected


def test_spans_are_ordered_substrings_separated_by_whitespace():
    text = "  A first one. A second!\n\nA third?  "
    spans = sentence_spans(text)
    assert spans == [(2, 14), (15, 24), (26, 34)]
    assert all(text[e:s].isspace() for (_, e), (s, _) in zip(spans, spans[1:]))


def test_keep_newlines_keeps_trailing_whitespace():
    text = "One.\nTwo.\n\nThree."
    assert split_sentences(text, keep_newlines=True) == ["One.\n", "Two.\n\n", "Three."]
    assert split_sentences(text) == ["One.", "Two.", "Three."]


@pytest.fixture(scope="module")
def austen_sentences(repo_root):
    import sys

    sys.path.insert(0, str(repo_root))
    from tools.austen_to_jsonl import iter_documents

    docs = [d["text"] for d in iter_documents(repo_root / "data" / "corpora" / "austen")]
    return docs, [split_sentences(d) for d in docs]


def test_austen_reconstructs_modulo_whitespace(austen_sentences):
    docs, sentences = austen_sentences
    for doc, sents in zip(docs, sentences):
        assert "".join(doc.split()) == "".join("".join(s.split()) for s in sents)
        assert all(s == s.strip() and s for s in sents)


def test_austen_abbreviations_not_split(austen_sentences):
    _, sentences = austen_sentences
    flat = [s for sents in sentences for s in sents]
    assert 25_000 < len(flat) < 40_000
    assert not [s for s in flat if re.search(r"\b(Mr|Mrs|Dr|St)\.$", s)]
    assert any(s.startswith("Sixteen years had Miss Taylor been in Mr. Woodhouse's") for s in flat)
    woodhouse = sum(s.count("Mr. Woodhouse") for s in flat)
    assert woodhouse > 100  # present inside sentences, never cut after "Mr."
    assert flat[0].startswith("Emma Woodhouse, handsome, clever, and rich") and flat[0].endswith(
        "distress or vex her."
    )
